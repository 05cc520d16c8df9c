"""defaults.timeout on real workers: a non-streaming answer cut by it keeps what was generated
and frees its batch slot; a stream is never cut by it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import NO_SPECIAL, start_server, wait_until
from tests.openai_schemas import validate

TIMEOUT = 0.5
"""About 85 tokens of the tiny model on a 2-core CPU; far below max_tokens on faster machines too."""


def test_timeout_keeps_the_text_and_never_cuts_a_stream(tmp_path: Path, tiny_models_root: Path) -> None:
    config: dict[str, Any] = {
        "defaults": {"model": "tiny-llama", "model_directory": str(tiny_models_root), "embedded_model": False, "timeout": TIMEOUT},
        "server": {},
        "models": {},
    }
    server = start_server(tmp_path, config)
    try:
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Go on."}], "temperature": 0, "logit_bias": NO_SPECIAL}
        with server.client() as http:
            http.post("/v1/chat/completions", json={**body, "max_tokens": 4})  # the model is loaded and warm
            started = time.monotonic()
            response = http.post("/v1/chat/completions", json={**body, "max_tokens": 1900})
            elapsed = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert response.headers["x-mlx-router-stopped"] == "timeout"
            answer = response.json()
            validate(answer, "CreateChatCompletionResponse")
            assert answer["choices"][0]["finish_reason"] == "length"
            within = answer["usage"]["completion_tokens"]
            assert 0 < within < 1900 and answer["choices"][0]["message"]["content"]
            assert TIMEOUT <= elapsed < TIMEOUT + 5
            assert wait_until(lambda: sum(m["sequences"] for m in http.get("/v1/health").json()["loaded_models"]) == 0)

            # A stream asked for about three timeouts' worth of tokens runs to its max_tokens.
            wanted = min(1900, 3 * within)
            started = time.monotonic()
            with http.stream("POST", "/v1/chat/completions", json={**body, "max_tokens": wanted, "stream": True,
                                                                    "stream_options": {"include_usage": True}}) as stream:
                lines = [line for line in stream.iter_lines() if line.startswith("data: {")]
            elapsed = time.monotonic() - started
            usage = httpx.Response(200, content=lines[-1].removeprefix("data: ")).json()["usage"]
            assert usage["completion_tokens"] == wanted
            assert '"finish_reason":"length"' in lines[-2]
            assert elapsed > TIMEOUT, "the stream outlived defaults.timeout"
    finally:
        server.stop()
