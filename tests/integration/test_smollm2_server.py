"""The embedded default: a server with no model configured imports SmolLM2 and answers for real."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import RunningServer, start_server
from tests.openai_schemas import validate

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_default_model_is_imported_and_listed(smol_server: RunningServer, embedded_model_dir: Path) -> None:
    folder = embedded_model_dir / "SmolLM2-135M-Instruct"
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    with smol_server.client() as http:
        models = http.get("/v1/models").json()
        health = http.get("/v1/health").json()
    validate(models, "ListModelsResponse")
    assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"]
    card = models["data"][0]
    assert card["state"] == "ready"
    assert card["memory_requirements"]["weight_bytes"] > 100_000_000  # measured by MLX after load
    assert health["current_model"] == "SmolLM2-135M-Instruct"


def test_greedy_answer_names_paris(smol_server: RunningServer) -> None:
    result = smol_server.openai().chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=QUESTION, temperature=0, max_tokens=30
    )
    validate(result.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    answer = result.choices[0].message.content or ""
    assert "Paris" in answer, answer
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None and 0 < result.usage.completion_tokens < 30


def test_stream_delivers_tokens_as_they_are_made(smol_server: RunningServer) -> None:
    """The first content arrives long before the last: real streaming, not a sliced answer."""
    started = time.perf_counter()
    stream = smol_server.openai().chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_tokens=40,
        stream=True,
    )
    arrivals: list[float] = []
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
            text += chunk.choices[0].delta.content
    assert len(arrivals) >= 20, text
    first, last = arrivals[0], arrivals[-1]
    assert first < last / 3, (first, last)


def test_stream_answer_names_paris(smol_server: RunningServer) -> None:
    stream = smol_server.openai().chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=QUESTION, temperature=0, max_tokens=30, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text, text


def test_second_start_reuses_the_import(smol_server: RunningServer, embedded_model_dir: Path, tmp_path: Path) -> None:
    weights = embedded_model_dir / "SmolLM2-135M-Instruct" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = start_server(tmp_path, {"defaults": {"model_directory": str(embedded_model_dir)}})
    try:
        assert "Importing the embedded" not in again.log()
        with again.client() as http:
            assert http.get("/health").status_code == 200
    finally:
        again.stop()
    assert weights.stat().st_mtime_ns == before
