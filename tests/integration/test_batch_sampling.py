"""Sampling in a batch: unseeded requests with the same settings are drawn in one call per step
(mlx-lm samples row by row unless every row holds the same sampler), rows holding different
samplers are sampled one call per sampler, and seeded requests keep their own random key, so a
seed gives the same tokens alone and beside others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from mlx_router.engine.batch import SHARED_SAMPLERS, BatchScheduler
from mlx_router.engine.lm import LMEngine, greedy
from mlx_router.engine.types import BatchOptions, GenerationRequest
from mlx_router.engine.types import GenerationParams as Params


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LMEngine:
    return LMEngine.load(str(tiny_model_dir), context_length=None, chat_template=None)


def _request(name: str, **params: Any) -> GenerationRequest:
    return GenerationRequest(name, Params(max_tokens=12, **params), prompt=f"Tell me about {name}")


def _texts(scheduler: BatchScheduler) -> dict[str, str]:
    texts: dict[str, str] = {}
    while scheduler.active:
        for chunk in scheduler.step():
            texts[chunk.request_id] = texts.get(chunk.request_id, "") + chunk.text
    return texts


def test_unseeded_requests_with_equal_settings_are_sampled_in_one_call(engine: LMEngine, monkeypatch: Any) -> None:
    scheduler = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    for i in range(4):
        scheduler.add(_request(f"u{i}", temperature=0.7, top_p=0.9))
    calls: list[int] = []
    categorical = mx.random.categorical

    def counted(logits: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        calls.append(logits.shape[0])
        return categorical(logits, *args, **kwargs)

    monkeypatch.setattr(mx.random, "categorical", counted)
    per_step: list[list[int]] = []
    while scheduler.active:
        calls.clear()
        scheduler.step()
        per_step.append(list(calls))
    decoding = [rows for rows in per_step if sum(rows) == 4]
    assert decoding, per_step
    assert all(rows == [4] for rows in decoding), per_step  # one call for the four rows, every step

    # Greedy rows and a seeded row (a key of its own) beside them: one call per sampler, not per row.
    scheduler.add(_request("greedy-0", temperature=0))
    for i in range(3):
        scheduler.add(_request(f"v{i}", temperature=0.7, top_p=0.9))
    scheduler.add(_request("seeded", temperature=0.7, top_p=0.9, seed=5))
    scheduler.add(_request("greedy-1", temperature=0))
    texts: dict[str, str] = {}
    per_step.clear()
    while scheduler.active:
        calls.clear()
        for chunk in scheduler.step():
            texts[chunk.request_id] = texts.get(chunk.request_id, "") + chunk.text
        per_step.append(list(calls))
    # Their first tokens are drawn where mlx-lm starts them (row by row); every decode step after that is grouped.
    decoding = [rows for rows in per_step if sum(rows) == 4]
    assert len(decoding) > 5 and all(rows == [3, 1] for rows in decoding[1:]), per_step
    alone = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    alone.add(_request("greedy-1", temperature=0))
    assert _texts(alone)["greedy-1"] == texts["greedy-1"]  # greedy rows keep their argmax


def test_sampler_table(engine: LMEngine) -> None:
    def settings(**params: Any) -> Params:
        return Params(max_tokens=8, **params)

    scheduler = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    warm = settings(temperature=0.7, top_p=0.9)
    assert scheduler.sampler(warm) is scheduler.sampler(settings(temperature=0.7, top_p=0.9))
    assert scheduler.sampler(warm) is not scheduler.sampler(settings(temperature=0.7, top_p=0.8))
    assert scheduler.sampler(warm) is not scheduler.sampler(settings(temperature=0.7, top_k=20))
    seeded = settings(temperature=0.7, top_p=0.9, seed=1)
    assert scheduler.sampler(seeded) is not scheduler.sampler(seeded)
    assert scheduler.sampler(settings(temperature=0)) is greedy
    first = scheduler.sampler(settings(temperature=0.05))
    for i in range(SHARED_SAMPLERS):
        scheduler.sampler(settings(temperature=0.1 + i / 100))
    assert len(scheduler._samplers) == SHARED_SAMPLERS
    assert scheduler.sampler(settings(temperature=0.05)) is not first  # bounded: the oldest went


def test_a_seed_gives_the_same_tokens_beside_unseeded_neighbours(engine: LMEngine) -> None:
    alone = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    alone.add(_request("seeded", temperature=1.0, seed=11))
    expected = _texts(alone)["seeded"]
    crowded = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    for i in range(3):
        crowded.add(_request(f"n{i}", temperature=1.0))
    crowded.add(_request("seeded", temperature=1.0, seed=11))
    texts = _texts(crowded)
    assert texts["seeded"] == expected
    assert len({texts[f"n{i}"] for i in range(3)}) > 1  # one shared key, yet independent draws
