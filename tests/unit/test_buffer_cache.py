"""MLX's buffer cache after a prompt chunk: emptied as mlx-lm does (buffer_cache_bytes 0, the
default off a CUDA GPU) or kept under a cache limit, with the same tokens either way (tiny
random-weight model, real MLX on the CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import mlx.core as mx
import pytest

from mlx_router.engine.batch import BatchScheduler, _buffer_cache_bytes
from mlx_router.engine.lm import LMEngine
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest

NO_EOS = {0: -100.0, 1: -100.0, 2: -100.0}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LMEngine:
    from mlx_router.fabricate import make_tiny_llm

    path = make_tiny_llm(tmp_path_factory.mktemp("models") / "tiny")
    return LMEngine.load(str(path), context_length=None, chat_template=None)


@pytest.fixture
def clears(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times MLX's buffer cache was emptied; the cache limit put back afterwards."""
    count: list[int] = []
    clear = mx.clear_cache
    monkeypatch.setattr(mx, "clear_cache", lambda: (count.append(1), clear())[1])
    limit = mx.set_cache_limit(1 << 40)
    mx.set_cache_limit(limit)
    yield count
    mx.set_cache_limit(limit)


def generate(engine: LMEngine, options: BatchOptions) -> tuple[str, int]:
    scheduler = BatchScheduler(engine, options)
    ids = tuple(range(5, 5 + 150))  # three prompt chunks of 64
    scheduler.add(GenerationRequest("r", GenerationParams(max_tokens=6, logit_bias=NO_EOS), prompt_ids=ids))
    chunks = []
    while scheduler.active:
        chunks.extend(scheduler.step())
    return "".join(c.text for c in chunks), chunks[-1].completion_tokens


@pytest.mark.parametrize("pad", [False, True])
def test_kept_buffers_are_not_given_back_after_each_chunk(engine: LMEngine, clears: list[int], pad: bool) -> None:
    def options(keep: int) -> BatchOptions:
        return BatchOptions(prefill_step_size=64, prefill_buckets=pad, prefill_warmup=False, prefix_cache_bytes=0,
                            buffer_cache_bytes=keep)

    emptied = generate(engine, options(0))
    assert len(clears) >= 3  # once per prompt chunk
    clears.clear()
    kept = generate(engine, options(32 << 20))
    assert clears == []
    assert mx.set_cache_limit(1 << 40) == 32 << 20  # the configured bound is MLX's cache limit
    assert kept == emptied and emptied[1] == 6 and emptied[0]  # the same greedy text


def test_the_default_keeps_buffers_on_a_cuda_gpu_only(engine: LMEngine) -> None:
    assert _buffer_cache_bytes(engine, BatchOptions()) == 0  # the CPU: mlx-lm's way
    assert _buffer_cache_bytes(engine, BatchOptions(buffer_cache_bytes=5)) == 5


def test_released_arrays_do_not_return_to_the_buffer_cache() -> None:
    """The disk tier's copies, read on the host, go back to the system; MLX's cache limit is as before."""
    from mlx_router.engine.prefix_cache import release

    limit = mx.set_cache_limit(16 << 20)
    try:
        kept = mx.ones((1 << 18,))
        mx.eval(kept)
        del kept  # 1 MB in the cache
        before = mx.get_cache_memory()
        copy = mx.ones((3 << 18,)) * 2
        assert copy[-1].item() == 2.0  # read on the host, as safetensors writing does
        arrays = {"k.0": copy}
        del copy
        release(arrays)
        assert arrays == {} and mx.get_cache_memory() <= before
        assert mx.set_cache_limit(limit) == 16 << 20
    finally:
        mx.set_cache_limit(limit)
