"""SIGHUP re-reads the config file of a real server while a stream runs on real MLX: the stream
completes on the worker it started on, a newly added alias is served, and the streaming model,
whose load-time settings changed, is reloaded with them once the stream has ended."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import NO_SPECIAL, BackgroundStream, RunningServer, start_server, wait_until

pytestmark = pytest.mark.integration

TOKENS = 3000


def admin_row(server: RunningServer, model_id: str) -> dict[str, Any] | None:
    with server.client() as http:
        rows = http.get("/v1/admin/models").json()["data"]
    return next((row for row in rows if row["id"] == model_id), None)


def test_sighup_reloads_the_config_while_a_stream_runs(tmp_path: Path, tiny_models_root: Path) -> None:
    config: dict[str, Any] = {
        "defaults": {
            "model": "tiny-llama",
            "model_directory": str(tiny_models_root),
            "embedded_model": False,
            "cache_size": 2,
        },
        "server": {},
        "models": {"tiny-llama": {"context_length": 8192}},
    }
    server = start_server(tmp_path, config)
    try:
        pid_before = admin_row(server, "tiny-llama")["pid"]  # type: ignore[index]
        body = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "go"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": TOKENS,
            "temperature": 0,
            "logit_bias": NO_SPECIAL,
        }
        stream = BackgroundStream(server, body)
        assert stream.producing.wait(timeout=60)

        # The file gains an alias and changes the streaming model's context (a load-time setting).
        config["models"] = {"tiny-llama": {"context_length": 4096}, "tiny-added": {"path": "tiny-llama", "max_tokens": 5}}
        server.config_path.write_text(json.dumps(config))
        server.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: admin_row(server, "tiny-added") is not None, 30), server.log()[-3000:]
        row = admin_row(server, "tiny-llama")
        assert row is not None and row["retiring"] is True and row["in_flight"] == 1, row
        assert stream.running, "the stream ended before the reload: raise TOKENS"

        stream.join(timeout=120)
        assert not stream.running
        assert stream.events[-1] == "[DONE]"
        final = [json.loads(e) for e in stream.events[:-1]]
        assert not any("error" in chunk for chunk in final), stream.events[-3:]
        assert final[-1]["usage"]["completion_tokens"] == TOKENS
        assert [c["finish_reason"] for chunk in final for c in chunk["choices"] if c["finish_reason"]] == ["length"]

        with server.client() as http:
            added = http.post(
                "/v1/chat/completions", json={"model": "tiny-added", "messages": [{"role": "user", "content": "hi"}]}
            )
            assert added.status_code == 200, added.text
            assert added.json()["usage"]["completion_tokens"] <= 5
            # The pinned default came back on a new worker with the new context.
            assert wait_until(lambda: (admin_row(server, "tiny-llama") or {}).get("state") == "ready", 30)
            model = http.get("/v1/models/tiny-llama").json()
            assert model["parameters"]["context_length"] == 4096
        assert admin_row(server, "tiny-llama")["pid"] != pid_before  # type: ignore[index]
        assert "SIGHUP: configuration reloaded" in server.log()

        # A broken file is refused, and the server keeps serving what it had.
        server.config_path.write_text("{broken")
        server.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "not valid JSON" in server.log(), 30), server.log()[-3000:]
        assert server.process.poll() is None
        assert admin_row(server, "tiny-added") is not None
    finally:
        server.stop()
