"""A step's decoded chunks leave (``BatchScheduler.emit``) before the prefill chunk that mlx-lm
runs in the same generator call, and the text is the same either way (tiny random-weight model,
real MLX on the CPU)."""

from __future__ import annotations

from typing import Any

import pytest
from mlx_lm.generate import PromptProcessingBatch

from mlx_router.engine.batch import BatchScheduler
from mlx_router.engine.lm import LMEngine
from mlx_router.engine.types import BatchOptions, GenerationChunk, GenerationParams, GenerationRequest

NO_EOS = {0: -100.0, 1: -100.0, 2: -100.0}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LMEngine:
    from mlx_router.fabricate import make_tiny_llm

    path = make_tiny_llm(tmp_path_factory.mktemp("models") / "tiny")
    return LMEngine.load(str(path), context_length=None, chat_template=None)


def request(rid: str, n: int, max_tokens: int = 6, stop: tuple[str, ...] = ()) -> GenerationRequest:
    params = GenerationParams(max_tokens=max_tokens, logit_bias=NO_EOS, stop=stop)
    return GenerationRequest(rid, params, prompt_ids=tuple((7 * n + 31 * j) % 200 + 5 for j in range(n)))


def test_running_streams_get_their_token_before_a_new_prompt_is_prefilled(
    engine: LMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    prompt = PromptProcessingBatch.prompt

    def prefill(self: Any, tokens: list[list[int]]) -> None:
        events.append("prefill")
        prompt(self, tokens)

    monkeypatch.setattr(PromptProcessingBatch, "prompt", prefill)
    scheduler = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    scheduler.emit = lambda chunks: events.append("emit " + ",".join(c.request_id for c in chunks))
    scheduler.add(request("a", 20, max_tokens=20))
    for _ in range(10):  # prefill, then the first decoded token
        scheduler.step()
        if any(e.startswith("emit") for e in events):
            break
    assert any(e.startswith("emit") for e in events)
    events.clear()
    scheduler.add(request("b", 30))
    assert scheduler.step() == []  # everything went to emit
    assert events == ["emit a", "prefill"]


def test_the_text_is_the_same_with_and_without_emit(engine: LMEngine) -> None:
    def run(emit: bool) -> dict[str, tuple[str, str | None]]:
        scheduler = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
        chunks: list[GenerationChunk] = []
        if emit:
            scheduler.emit = chunks.extend
        scheduler.add(request("a", 12, max_tokens=9))
        scheduler.step()
        scheduler.add(request("b", 25, max_tokens=5))
        scheduler.add(request("c", 17, max_tokens=12))
        while scheduler.active:
            returned = scheduler.step()
            assert not (emit and returned)
            chunks.extend(returned)
        out: dict[str, tuple[str, str | None]] = {}
        for c in chunks:
            text, _ = out.get(c.request_id, ("", None))
            out[c.request_id] = (text + c.text, c.finish_reason)
        return out

    plain, emitted = run(False), run(True)
    assert plain == emitted and set(plain) == {"a", "b", "c"}
    assert all(finish == "length" for _, finish in plain.values())


def test_a_stop_string_ends_an_emitted_sequence(engine: LMEngine) -> None:
    plain = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    text = "".join(c.text for c in plain.run_to_end(request("x", 15, max_tokens=8)))
    assert len(text) > 2
    stop = text[1:3]
    scheduler = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    chunks: list[GenerationChunk] = []
    scheduler.emit = chunks.extend
    scheduler.add(request("y", 15, max_tokens=8, stop=(stop,)))
    while scheduler.active:
        scheduler.step()
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stop_sequence == stop
    assert "".join(c.text for c in chunks) == text[: text.index(stop)]
