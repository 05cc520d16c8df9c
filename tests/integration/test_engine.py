"""The engine on real MLX: batching, prefix cache, cancellation, backpressure, crashes, drain."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import NO_SPECIAL, BackgroundStream, RunningServer, start_server, wait_until

pytestmark = pytest.mark.integration

PROMPTS = [f"Tell me about {topic}." for topic in ("cats", "the sea", "a red house", "music", "snow", "bread", "trains", "x")]


def chat(http: httpx.Client, content: str, model: str = "tiny-llama", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def sequences(server: RunningServer) -> int:
    with server.client() as http:
        loaded = http.get("/v1/health").json()["loaded_models"]
    return sum(m["sequences"] for m in loaded)


@pytest.fixture
def engine_server(tmp_path: Path, tiny_models_root: Path) -> Any:
    servers: list[RunningServer] = []

    def start(server: dict[str, Any] | None = None, models: dict[str, Any] | None = None, **defaults: Any) -> RunningServer:
        config = {
            "defaults": {
                "model": "tiny-llama",
                "model_directory": str(tiny_models_root),
                "embedded_model": False,
                **defaults,
            },
            "server": dict(server or {}),
            "models": dict(models or {}),
        }
        folder = tmp_path / f"server{len(servers)}"
        folder.mkdir()
        server = start_server(folder, config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_batched_greedy_equals_unbatched(tiny_server: RunningServer) -> None:
    with tiny_server.client() as http:
        alone = [chat(http, p, max_tokens=24)["choices"][0]["message"]["content"] for p in PROMPTS]

    def one(prompt: str) -> str:
        with tiny_server.client() as http:
            return str(chat(http, prompt, max_tokens=24)["choices"][0]["message"]["content"])

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(one, PROMPTS))
    assert together == alone


def test_prefix_cache_hit_is_reported_and_output_identical(tiny_server: RunningServer) -> None:
    # A unique opening, so that no earlier request on this shared server shares more than the
    # chat template's first tokens with this one.
    system = f"Zq{uuid.uuid4().hex} " + "You are a careful assistant. " * 40
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Say something."}]
    with tiny_server.client() as http:
        body = {"model": "tiny-llama", "messages": messages, "temperature": 0, "max_tokens": 16}
        cold = http.post("/v1/chat/completions", json=body).json()
        warm = http.post("/v1/chat/completions", json=body).json()
        other = dict(body, messages=[messages[0], {"role": "user", "content": "Something else."}])
        shared = http.post("/v1/chat/completions", json=other).json()
    # Cold: at most the chat template's opening tokens are shared with earlier requests.
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] < 8 < cold["usage"]["prompt_tokens"]
    assert warm["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] >= cold["usage"]["prompt_tokens"] - 1
    # A different question after the same system prompt reuses the shared prefix.
    assert shared["usage"]["prompt_tokens_details"]["cached_tokens"] > 100


def test_queue_overflow_is_429_and_a_disconnect_frees_the_slot(engine_server: Any) -> None:
    server = engine_server(max_batch_size=1, max_queue=0)
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 100000,
        "stream": True,
        "logit_bias": NO_SPECIAL,
    }
    with server.client() as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()  # kept referenced: dropping it would close the stream
            next(line for line in lines if '"content"' in line)
            busy = http.post("/v1/chat/completions", json=dict(body, stream=False, max_tokens=2))
            assert busy.status_code == 429
            assert busy.headers["retry-after"]
            assert busy.json()["error"]["code"] == "queue_full"
        # The stream was closed by the client: its sequence stops and the slot is free again.
        assert wait_until(lambda: sequences(server) == 0)
        assert chat(http, "hi", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_non_streaming_disconnect_stops_generation(engine_server: Any) -> None:
    server = engine_server()
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "go"}], "max_tokens": 100000, "logit_bias": NO_SPECIAL}
    with httpx.Client(base_url=server.base_url, timeout=1.0) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=body)
    assert wait_until(lambda: sequences(server) == 0, timeout=5)
    # The worker dropped the sequence and says how far it got.
    assert wait_until(lambda: "cancelled after" in server.log(), timeout=5)


def test_killed_worker_fails_only_its_own_requests(tmp_path: Path, make_tiny_model: Any) -> None:
    make_tiny_model("alpha")
    folder = make_tiny_model("beta", seed=1)
    server = start_server(
        tmp_path,
        {"defaults": {"model_directory": str(folder.parent), "embedded_model": False, "cache_size": 2}},
    )
    try:
        results: dict[str, list[str]] = {}
        streaming = {"alpha": threading.Event(), "beta": threading.Event()}

        def stream(model: str, max_tokens: int) -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "go"}],
                "max_tokens": max_tokens,
                "stream": True,
                "logit_bias": NO_SPECIAL,
            }
            with server.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
                results[model] = []
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        results[model].append(line[6:])
                        if '"content":"' in line and '"role"' not in line:
                            streaming[model].set()

        with server.client() as http:
            for model in ("alpha", "beta"):
                http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
            pids = {m["id"]: m["pid"] for m in http.get("/v1/health").json()["loaded_models"]}
        threads = [threading.Thread(target=stream, args=("alpha", 100000)), threading.Thread(target=stream, args=("beta", 3000))]
        for thread in threads:
            thread.start()
        # Both streams are producing tokens (a kill before the admission is a plain 503 instead).
        assert all(event.wait(timeout=30) for event in streaming.values())
        os.kill(pids["alpha"], signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=120)
        assert json.loads(results["alpha"][-2])["error"]["code"] == "worker_crashed"
        beta = [json.loads(e) for e in results["beta"][:-1]]
        assert results["beta"][-1] == "[DONE]"
        assert all("error" not in e for e in beta)
        assert beta[-1]["choices"][0]["finish_reason"] == "length"
    finally:
        server.stop()


def test_sigterm_drains_then_ends_streams_with_an_error(engine_server: Any) -> None:
    # A context long enough that the stream outlives the drain deadline by far.
    server = engine_server(
        server={"drain_timeout": 1.5}, models={"tiny-llama": {"context_length": 16384}}, max_tokens=100000
    )
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "go"}], "stream": True, "logit_bias": NO_SPECIAL}
    stream = BackgroundStream(server, body)
    assert stream.producing.wait(timeout=30)
    server.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: _status(server, "/v1/models") == 503, timeout=5)
    assert _status(server, "/health") == 503
    stream.join(timeout=60)
    assert not stream.running
    assert stream.events[-1] == "[DONE]"
    assert json.loads(stream.events[-2])["error"]["code"] == "shutting_down"
    assert server.process.wait(timeout=30) == 0


def _status(server: RunningServer, path: str) -> int:
    try:
        return httpx.get(server.base_url + path, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_broken_models_fail_alone_with_a_reason(tmp_path: Path, make_tiny_model: Any) -> None:
    """A truncated weights file, a folder of an unknown architecture: FAILED with the reason after
    the first attempt, a clear 503, and the healthy model keeps serving."""
    healthy = make_tiny_model("healthy")
    truncated = make_tiny_model("truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    weightless = make_tiny_model("weightless")
    for file in weightless.glob("model*.safetensors*"):
        file.unlink()
    alien = make_tiny_model("alien")
    config = json.loads((alien / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    server = start_server(
        tmp_path,
        {"defaults": {"model": "healthy", "model_directory": str(healthy.parent), "embedded_model": False, "cache_size": 4}},
    )
    try:
        with server.client() as http:
            for name in ("truncated", "weightless", "alien"):
                response = http.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "x"}]})
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "model_load_failed" and name in error["message"]
                assert str(tmp_path) not in response.text
            cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
            assert cards["truncated"]["state"] == "failed" and cards["truncated"]["failure_reason"]
            assert cards["weightless"]["state"] == "failed" and cards["weightless"]["failure_reason"]
            assert cards["alien"]["state"] == "failed" and "no-such-architecture" in cards["alien"]["failure_reason"]
            assert chat(http, "still here", model="healthy", max_tokens=3)["usage"]["completion_tokens"] == 3
    finally:
        server.stop()


def test_a_spare_worker_takes_the_next_load(tmp_path: Path, make_tiny_model: Any) -> None:
    """With spare_worker on, a load adopts the waiting process (MLX already imported) and a new
    spare starts behind it."""
    make_tiny_model("alpha")
    folder = make_tiny_model("beta", seed=1)
    server = start_server(
        tmp_path,
        {"defaults": {"model_directory": str(folder.parent), "embedded_model": False, "cache_size": 1, "spare_worker": True}},
    )

    def health() -> dict[str, Any]:
        with server.client() as http:
            return http.get("/v1/health").json()  # type: ignore[no-any-return]

    try:
        for model in ("alpha", "beta"):
            assert wait_until(lambda: health()["spare_worker_pid"] is not None, timeout=60)
            spare = health()["spare_worker_pid"]
            with server.client() as http:
                assert chat(http, "hi", model=model, max_tokens=2)["usage"]["completion_tokens"] == 2
            loaded = health()["loaded_models"]
            assert [m["id"] for m in loaded] == [model]
            assert loaded[0]["pid"] == spare
        assert wait_until(lambda: health()["spare_worker_pid"] not in (None, spare), timeout=60)
        assert "Loaded alpha in" in server.log() and "Loaded beta in" in server.log()
    finally:
        server.stop()
