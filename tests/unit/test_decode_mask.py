"""Decode steps attend without a mask when no row of the batch is padded (the fused decode
kernels of the CUDA backend take no mask array), and with it when rows are padded
(tiny random-weight model, real MLX on the CPU)."""

from __future__ import annotations

from typing import Any

import pytest

from mlx_router.engine import batch
from mlx_router.engine.batch import BatchScheduler
from mlx_router.engine.lm import LMEngine
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest

NO_EOS = {0: -100.0, 1: -100.0, 2: -100.0}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LMEngine:
    from mlx_router.fabricate import make_tiny_llm

    path = make_tiny_llm(tmp_path_factory.mktemp("models") / "tiny")
    return LMEngine.load(str(path), context_length=None, chat_template=None)


@pytest.fixture
def masks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each decode step's mask was: None, or the mask array."""
    seen: list[Any] = []
    make_mask = batch._DecodeCache.make_mask

    def spy(self: Any, N: int, return_array: bool = False, **kwargs: Any) -> Any:
        mask = make_mask(self, N, return_array=return_array, **kwargs)
        if N == 1:
            seen.append(mask)
        return mask

    monkeypatch.setattr(batch._DecodeCache, "make_mask", spy)
    return seen


def run(scheduler: BatchScheduler, prompts: dict[str, list[int]], max_tokens: int = 10) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {rid: [] for rid in prompts}
    for rid, ids in prompts.items():
        scheduler.add(GenerationRequest(rid, GenerationParams(max_tokens=max_tokens, logit_bias=NO_EOS), prompt_ids=tuple(ids)))
    while scheduler.active:
        for chunk in scheduler.step():
            out[chunk.request_id].append(chunk.text)
    return out


def prompt(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + j * 31) % 200 + 5 for j in range(n)]


def test_one_stream_decodes_unmasked_after_a_padded_prefill(engine: LMEngine, masks: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    padded = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0, prefill_buckets=True, prefill_warmup=False))
    assert padded.buckets
    ids = prompt(1, 37)  # 36 tokens prefilled as a 40-wide chunk, then the padding is cut
    got = run(padded, {"a": ids})["a"]
    assert masks and all(m is None for m in masks)
    # The same sequence with the mask forced on every step: the same tokens.
    masks.clear()
    monkeypatch.setattr(batch._DecodeCache, "_has_padding", lambda self: True)
    forced = run(BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0, prefill_buckets=True, prefill_warmup=False)), {"b": ids})["b"]
    assert masks and all(m is not None for m in masks)
    assert "".join(got) == "".join(forced) and len(got) == 10


def test_rows_of_different_lengths_keep_their_mask_and_their_answers(engine: LMEngine, masks: list[Any]) -> None:
    prompts = {"short": prompt(2, 9), "long": prompt(3, 30)}
    alone = {rid: run(BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0)), {rid: ids})[rid] for rid, ids in prompts.items()}
    masks.clear()
    together = run(BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0)), prompts)
    assert any(m is not None for m in masks)  # the short row is padded while both decode
    assert {rid: "".join(t) for rid, t in together.items()} == {rid: "".join(t) for rid, t in alone.items()}


def test_a_batch_that_shrinks_to_one_unpadded_row_drops_the_mask(engine: LMEngine, masks: list[Any]) -> None:
    scheduler = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    scheduler.add(GenerationRequest("short", GenerationParams(max_tokens=3, logit_bias=NO_EOS), prompt_ids=tuple(prompt(4, 9))))
    scheduler.add(GenerationRequest("long", GenerationParams(max_tokens=12, logit_bias=NO_EOS), prompt_ids=tuple(prompt(5, 30))))
    while scheduler.active:
        scheduler.step()
    # While both decode, the short row is padded; once it ends, mlx-lm cuts the common padding.
    assert masks[0] is not None and masks[-1] is None
