"""The prefix cache's disk tier across a restart, and the worker's count of tokens generated
after a client went away (real server, tiny model)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import NO_SPECIAL, RunningServer, start_server, wait_until

pytestmark = pytest.mark.integration


def config(models: Path, kv: Path) -> dict[str, Any]:
    return {
        "defaults": {
            "model": "tiny-llama",
            "model_directory": str(models),
            "embedded_model": False,
            "prefix_cache_directory": str(kv),
            "prefix_cache_block_tokens": 16,
        }
    }


def ask(server: RunningServer, system: str, question: str) -> dict[str, Any]:
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 8,
        "logit_bias": NO_SPECIAL,
    }
    with server.client() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_long_prefix_is_still_cached_after_a_restart(tmp_path: Path, tiny_models_root: Path) -> None:
    kv = tmp_path / "kv"
    system = f"Zq{uuid.uuid4().hex} " + "You are a careful assistant who reads the tools first. " * 12
    (tmp_path / "one").mkdir()
    first = start_server(tmp_path / "one", config(tiny_models_root, kv))
    try:
        cold = ask(first, system, "What is the first tool?")
        assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        blocks = cold["usage"]["prompt_tokens"] // 16
        # The idle worker writes the blocks; a clean stop writes what is left.
        wait_until(lambda: len(list(kv.glob("*/*.safetensors"))) >= blocks, timeout=10)
    finally:
        first.stop()
    assert len(list(kv.glob("*/*.safetensors"))) >= blocks

    (tmp_path / "two").mkdir()
    second = start_server(tmp_path / "two", config(tiny_models_root, kv))
    try:
        again = ask(second, system, "What is the first tool?")
        other = ask(second, system, "And the second one?")
    finally:
        second.stop()
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= blocks * 16 - 16 and cached % 16 == 0
    assert again["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] > 100


def counter(server: RunningServer, name: str) -> float:
    with server.client() as http:
        text = http.get("/metrics").text
    found = re.search(rf'^{name}\{{model="tiny-llama"\}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_the_worker_counts_the_tokens_it_generated_after_a_client_left(tmp_path: Path, tiny_models_root: Path) -> None:
    server = start_server(tmp_path, config(tiny_models_root, tmp_path / "kv"))
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 100000,
        "stream": True,
        "logit_bias": NO_SPECIAL,
    }
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as http, http.stream(
            "POST", "/v1/chat/completions", json=body
        ) as response:
            lines = response.iter_lines()
            for _ in range(8):
                next(line for line in lines if '"content"' in line)
        assert wait_until(lambda: counter(server, "mlx_router_cancelled_sequences_total") == 1)
        after = counter(server, "mlx_router_tokens_after_cancel_total")
        log = server.log()
    finally:
        server.stop()
    generated = int(re.findall(r"cancelled after (\d+) generated tokens \((\d+) after", log)[-1][0])
    assert generated >= 8
    assert 0 <= after < generated
    print(f"tokens after the close: {after:.0f} of {generated}")


def test_padded_widths_are_prepared_while_idle_and_health_says_so(tmp_path: Path, tiny_models_root: Path) -> None:
    """With padded prefill widths the worker prepares them after its load; /v1/health shows
    ``warming`` until the last one is ready, and the log says how long it took. MLX's buffer
    cache is kept between prompt chunks (buffer_cache_bytes) and answers stay the same."""
    settings = config(tiny_models_root, tmp_path / "kv")
    settings["defaults"].update(prefill_buckets=True, prefill_step_size=64, buffer_cache_bytes=64 << 20)
    server = start_server(tmp_path, settings)
    try:
        def warming() -> list[bool]:
            with server.client() as http:
                return [m["warming"] for m in http.get("/v1/health").json()["loaded_models"]]

        assert wait_until(lambda: warming() == [False], timeout=30)
        assert wait_until(lambda: "prefill widths prepared in" in server.log(), timeout=10)
        widths = re.search(r"\[tiny-llama\] (\d+) prefill widths prepared", server.log())
        assert widths is not None and int(widths.group(1)) == 9  # 16-32 by 4, 40-64 by 8
        system = f"Zq{uuid.uuid4().hex} " + "Read the tools first. " * 20  # several chunks of 64
        first, again = ask(server, system, "Which tool?"), ask(server, system, "Which tool?")
    finally:
        server.stop()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]


def test_background_work_waits_for_idle_work_delay_after_the_load_and_each_request(
    tmp_path: Path, tiny_models_root: Path
) -> None:
    """``idle_work_delay``: the worker begins preparing widths and writing blocks only after that
    long without requests, so a request sent right after the load (as one that caused it is) is
    admitted at once, and so is the next one, before any block of the first is written."""
    settings = config(tiny_models_root, tmp_path / "kv")
    settings["defaults"].update(prefill_buckets=True, prefill_step_size=64, idle_work_delay=4.0)
    server = start_server(tmp_path, settings)

    def health() -> dict[str, Any]:
        with server.client() as http:
            return http.get("/v1/health").json()["loaded_models"][0]  # type: ignore[no-any-return]

    def blocks_on_disk() -> int:
        return len(list((tmp_path / "kv").glob("*/*.safetensors")))

    try:
        system = f"Zq{uuid.uuid4().hex} " + "Read the tools first. " * 20
        ask(server, system, "Which tool?")
        ask(server, system, "And then?")
        assert health()["warming"] and blocks_on_disk() == 0  # within the delay: nothing done yet
        assert wait_until(lambda: not health()["warming"], timeout=60)
        assert wait_until(lambda: blocks_on_disk() > 0, timeout=30)
    finally:
        server.stop()


@pytest.mark.parametrize("flush_seconds", [0.0, 20.0])
def test_an_unload_writes_pending_blocks_for_prefix_cache_flush_seconds(
    tmp_path: Path, tiny_models_root: Path, flush_seconds: float
) -> None:
    """Blocks the disk tier has not written yet (no idle time: ``idle_work_delay`` is long) are
    written when the model is unloaded, for at most ``prefix_cache_flush_seconds``."""
    settings = config(tiny_models_root, tmp_path / "kv")
    settings["defaults"].update(idle_work_delay=600.0, prefix_cache_flush_seconds=flush_seconds)
    server = start_server(tmp_path, settings)
    try:
        ask(server, f"Zq{uuid.uuid4().hex} " + "Read the tools first. " * 20, "Which tool?")
        assert not list((tmp_path / "kv").glob("*/*.safetensors"))
        with server.client() as http:
            assert http.post("/v1/admin/models/tiny-llama/unload").status_code == 200
    finally:
        server.stop()
    written = len(list((tmp_path / "kv").glob("*/*.safetensors")))
    assert written == 0 if flush_seconds == 0 else written > 0
