"""The block prefix cache: lookups by block, bounded memory, the disk tier, and the scheduler's
output with and without a cached prefix (tiny random-weight model, real MLX on the CPU)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from mlx_router.engine.batch import BatchScheduler, prefill_width, prefill_widths
from mlx_router.engine.lm import LMEngine
from mlx_router.engine.prefix_cache import DiskTier, PrefixCache, block_digests, model_identity
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest

LAYERS, HEADS, DIM, BLOCK = 2, 2, 4, 8


def kv_of(tokens: list[int]) -> list[KVCache]:
    """A KV cache whose entry for position p is a function of tokens[: p + 1], like a model's."""
    caches = []
    for layer in range(LAYERS):
        rows = [float(sum(tokens[: p + 1]) * (layer + 1) + p) for p in range(len(tokens))]
        keys = mx.broadcast_to(mx.array(rows)[None, None, :, None], (1, HEADS, len(tokens), DIM))
        c = KVCache()
        c.update_and_fetch(keys, -keys)
        caches.append(c)
    return caches


def test_a_prompt_gets_the_longest_block_aligned_prefix_and_nothing_past_it() -> None:
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 20)
    stored = list(range(100, 140))  # 40 tokens: 5 blocks
    cache.insert(stored, kv_of(stored))
    assert len(cache) == 5
    prompt = stored[:27] + [7, 7, 7, 7, 7]  # shares 27 tokens: 3 whole blocks and 3 of the next
    kv, cached = cache.fetch(prompt)
    assert cached == 27 and kv is not None
    expected = kv_of(prompt)
    for got, want in zip(kv, expected):
        assert got.offset == 27 and got.keys.shape[2] == 27
        assert mx.array_equal(got.keys, want.keys[..., :27, :]).item()
        assert mx.array_equal(got.values, want.values[..., :27, :]).item()
    assert cache.fetch(stored[:20] + [7] * 12)[1] == 20


def test_short_shared_openings_and_the_last_token_are_never_reused() -> None:
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 20)
    stored = list(range(40))
    cache.insert(stored, kv_of(stored))
    assert cache.fetch(stored[:3] + [999] * 30) == (None, 0)  # a chat template's 3 shared tokens
    _, cached = cache.fetch(stored[:16])  # all cached: one token is left to prefill
    assert cached == 15
    assert cache.fetch(stored[:8]) == (None, 0)  # less than a whole block
    assert cache.fetch([999] + stored[1:]) == (None, 0)


def test_a_fetched_cache_grows_without_touching_the_stored_blocks() -> None:
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 20)
    stored = list(range(24))
    cache.insert(stored, kv_of(stored))
    kv, _ = cache.fetch(stored + [1])
    assert kv is not None
    kv[0].update_and_fetch(mx.zeros((1, HEADS, 5, DIM)), mx.zeros((1, HEADS, 5, DIM)))
    again, _ = cache.fetch(stored + [1])
    assert again is not None
    assert mx.array_equal(again[0].keys, kv_of(stored)[0].keys[..., :24, :]).item()


def test_memory_is_bounded_and_a_chain_loses_its_leaves_first() -> None:
    one_block = 2 * LAYERS * HEADS * BLOCK * DIM * 4
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=6 * one_block)
    first = list(range(40))  # 5 blocks
    cache.insert(first, kv_of(first))
    second = list(range(500, 540))
    cache.insert(second, kv_of(second))
    assert cache.nbytes <= 6 * one_block and len(cache) == 6
    # The oldest chain lost its deepest blocks, not its root.
    _, cached = cache.fetch(first + [1])
    assert cached == BLOCK
    cache.trim_to(0)
    assert len(cache) == 0 and cache.nbytes == 0


def test_lookup_cost_does_not_grow_with_the_number_of_cached_sequences() -> None:
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 40)
    prompt = [1, 2, 3] + list(range(1000, 1640))

    def lookup_seconds() -> float:
        started = time.perf_counter()
        for _ in range(20):
            cache.fetch(prompt)
        return (time.perf_counter() - started) / 20

    empty = lookup_seconds()
    for i in range(200):  # 200 sequences sharing only the 3 opening tokens with the prompt
        tokens = [1, 2, 3] + list(range(10_000 * (i + 1), 10_000 * (i + 1) + 160))
        cache.insert(tokens, kv_of(tokens))
    full = lookup_seconds()
    assert len(cache) == 200 * 21  # 20 whole blocks and a partial one each
    assert full < 3 * empty + 1e-3


def test_block_names_depend_on_every_earlier_token() -> None:
    a = block_digests(list(range(32)), 8, 4)
    b = block_digests([99] + list(range(1, 32)), 8, 4)
    assert len(set(a)) == 4 and not set(a) & set(b)
    assert block_digests(list(range(32)), 8, 4) == a


def test_disk_tier_survives_a_new_process_and_drops_what_another_checkpoint_wrote(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    folder = tmp_path / "kv"
    disk = DiskTier(str(folder), str(model), BLOCK, 1 << 20)
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 20, disk=disk)
    stored = list(range(30))
    cache.insert(stored, kv_of(stored))
    assert disk.pending == 3
    while disk.write_one():
        pass
    assert len(disk) == 3 and disk.nbytes > 0

    # A new process: nothing in memory, the blocks come back from disk.
    reborn = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 20, disk=DiskTier(str(folder), str(model), BLOCK, 1 << 20))
    kv, cached = reborn.fetch(stored + [5])
    assert cached == 24 and kv is not None
    assert mx.array_equal(kv[1].keys, kv_of(stored)[1].keys[..., :24, :]).item()

    # The checkpoint changes: its old blocks are never used, and they are removed.
    os.utime(model / "model.safetensors", ns=(1, 1))
    changed = DiskTier(str(folder), str(model), BLOCK, 1 << 20)
    assert len(changed) == 0
    assert [p.name for p in folder.iterdir()] == [model_identity(str(model), BLOCK)]


def test_disk_tier_is_bounded_in_bytes_and_skips_damaged_files(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    disk = DiskTier(str(tmp_path / "kv"), str(model), BLOCK, 1 << 20)
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 20, disk=disk)
    stored = list(range(80))
    cache.insert(stored, kv_of(stored))
    while disk.write_one():
        pass
    per_file = disk.nbytes // len(disk)
    small = DiskTier(str(tmp_path / "kv"), str(model), BLOCK, 4 * per_file)
    assert len(small) == 4 and small.nbytes <= 4 * per_file
    victim = next(small.folder.glob("*.safetensors"))
    victim.write_bytes(b"not a safetensors file")
    assert small.load(bytes.fromhex(victim.stem), LAYERS) is None
    assert not victim.exists() and len(small) == 3


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LMEngine:
    from mlx_router.fabricate import make_tiny_llm

    path = make_tiny_llm(tmp_path_factory.mktemp("models") / "tiny")
    return LMEngine.load(str(path), context_length=None, chat_template=None)


def generate(scheduler: BatchScheduler, request_id: str, prompt: str, max_tokens: int = 12) -> tuple[str, int]:
    params = GenerationParams(max_tokens=max_tokens, logit_bias={0: -100.0, 1: -100.0, 2: -100.0})
    admission = scheduler.add(GenerationRequest(request_id, params, messages=({"role": "user", "content": prompt},)))
    text = ""
    while scheduler.active:
        text += "".join(c.text for c in scheduler.step() if c.request_id == request_id)
    return text, admission.cached_tokens


def test_scheduler_output_is_the_same_with_a_cached_prefix(engine: LMEngine, tmp_path: Path) -> None:
    options = BatchOptions(
        prefix_cache_block_tokens=16, prefix_cache_directory=str(tmp_path / "kv"), prefix_cache_disk_bytes=1 << 30
    )
    plain = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    cached = BatchScheduler(engine, options)
    prompt = "Tell me about the sea and the ships that sail on it. " * 6
    length = len(engine.encode(GenerationRequest("n", GenerationParams(max_tokens=1), messages=({"role": "user", "content": prompt},))))
    cold, hit = generate(cached, "a", prompt)
    assert hit == 0
    warm, hit = generate(cached, "b", prompt)
    assert hit == length - 1  # whole blocks, then the start of the last one
    assert warm == cold == generate(plain, "c", prompt)[0]
    # Another process (a restart): the whole blocks come back from disk, same answer.
    cached.close()
    restarted = BatchScheduler(engine, options)
    again, hit_after_restart = generate(restarted, "d", prompt)
    assert hit_after_restart == (length - 1) // 16 * 16 > 0 and again == cold


def test_prefill_widths_are_few_and_waste_at_most_a_quarter() -> None:
    widths = prefill_widths(2048)
    assert widths[:5] == [16, 20, 24, 28, 32] and widths[-1] == 2048 and len(widths) <= 32
    for n in range(1, 2049):
        width = prefill_width(n, 2048)
        assert width in widths and n <= width and (n <= 16 or width <= n * 1.25)
    assert prefill_width(3000, 2048) == 3000  # a chunk longer than the limit is never padded
    assert prefill_width(500, 300) == 500 and prefill_width(290, 300) == 300


def test_padded_prefill_gives_the_same_output_with_and_without_a_cached_prefix(engine: LMEngine) -> None:
    plain = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0, prefill_buckets=False))
    padded = BatchScheduler(engine, BatchOptions(prefill_buckets=True, prefill_warmup=True, prefix_cache_block_tokens=16))
    assert padded.buckets and not plain.buckets
    while padded.idle_work():  # the idle worker prepares every width first (no chunk, nothing cached)
        pass
    assert not padded.active and padded.prefix_cache is not None and len(padded.prefix_cache) == 0
    for i, prompt in enumerate(["Hi.", "Tell me about the sea and the ships on it. " * 5, "Name three colours of the sky."]):
        want = generate(plain, f"p{i}", prompt)[0]
        assert generate(padded, f"q{i}", prompt) == (want, 0)
        assert generate(padded, f"r{i}", prompt)[0] == want  # now from the prefix cache when long enough


def test_disk_tier_writes_the_newest_sequence_first_root_first(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    disk = DiskTier(str(tmp_path / "kv"), str(model), BLOCK, 1 << 20)
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 20, disk=disk)
    old, new = list(range(24)), list(range(100, 124))
    cache.insert(old, kv_of(old))
    cache.insert(new, kv_of(new))
    assert disk.pending == 6
    disk.write_one()
    assert block_digests(new, BLOCK, 1)[0] in disk and block_digests(old, BLOCK, 1)[0] not in disk
    cache.insert(old + [1] * 8, kv_of(old + [1] * 8))  # the old chain again, one block longer: it goes next
    assert disk.pending == 6
    for _ in range(4):
        disk.write_one()
    assert all(d in disk for d in block_digests(old + [1] * 8, BLOCK, 4))


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "none"])
def test_short_chunks_after_cached_tokens_attend_like_the_fused_kernel(engine: LMEngine, mask_kind: str) -> None:
    import sys

    from mlx_lm.models import base

    from mlx_router.engine.lm import attend_short_chunks_directly

    assert attend_short_chunks_directly(engine.model) is not None
    direct = sys.modules[type(engine.model).__module__].scaled_dot_product_attention
    assert direct is not base.scaled_dot_product_attention
    q, k, v = (mx.random.normal(shape, key=mx.random.key(i)) for i, shape in enumerate([(2, 8, 5, 16), (2, 2, 37, 16), (2, 2, 37, 16)]))
    mask: object = {"causal": "causal", "none": None}.get(mask_kind)
    if mask_kind == "bool":
        mask = (mx.arange(32, 37)[:, None] >= mx.arange(37)[None]) & (mx.arange(37)[None] >= mx.array([[0], [3]])[:, None, None])
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    got = direct(q, k, v, cache=None, scale=0.25, mask=mask)
    assert got.shape == want.shape and mx.allclose(got, want, atol=1e-5).item()


def test_a_first_chunk_of_a_width_not_yet_prepared_attends_directly(engine: LMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone in its batch and of a width still in the cold set: matrix products, the same result;
    once the width is prepared, or in a batch of two, the fused kernel."""
    import sys

    from mlx_router.engine.lm import attend_short_chunks_directly

    cold = attend_short_chunks_directly(engine.model)
    assert cold is not None and attend_short_chunks_directly(engine.model) is cold  # one set per patched module
    direct = sys.modules[type(engine.model).__module__].scaled_dot_product_attention
    fused, calls = mx.fast.scaled_dot_product_attention, []
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", lambda *a, **k: (calls.append(a[0].shape), fused(*a, **k))[1])
    q, k, v = (mx.random.normal(shape, key=mx.random.key(i)) for i, shape in enumerate([(2, 8, 24, 16), (2, 2, 24, 16), (2, 2, 24, 16)]))
    want = fused(q[:1], k[:1], v[:1], scale=0.25, mask="causal")
    cold.add(24)
    try:
        got = direct(q[:1], k[:1], v[:1], cache=None, scale=0.25, mask="causal")
        assert calls == [] and mx.allclose(got, want, atol=1e-5).item()
        direct(q, k, v, cache=None, scale=0.25, mask="causal")  # two prompts in the batch
        assert calls == [(2, 8, 24, 16)]
    finally:
        cold.discard(24)
    assert mx.allclose(direct(q[:1], k[:1], v[:1], cache=None, scale=0.25, mask="causal"), want, atol=1e-5).item()
    assert calls[-1] == (1, 8, 24, 16)


def test_the_idle_warm_up_takes_each_width_out_of_the_cold_set(engine: LMEngine) -> None:
    from mlx_router.engine.lm import attend_short_chunks_directly

    scheduler = BatchScheduler(engine, BatchOptions(prefill_step_size=64, prefill_buckets=True, prefill_warmup=True))
    cold, widths = attend_short_chunks_directly(engine.model), set(prefill_widths(64))
    assert cold is not None and cold >= widths and scheduler.warming == len(widths)
    scheduler.run_to_end(GenerationRequest("warmup", GenerationParams(max_tokens=2), prompt_ids=(5, 6, 7)))
    assert cold >= widths and scheduler.warming == len(widths)  # the load's warm-up leaves them cold
    while scheduler.idle_work():
        pass
    assert scheduler.warming == 0 and not cold & widths


def test_a_prefix_is_assembled_in_one_copy_per_block_not_per_layer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Blocks hold every layer in one array (and one file on disk): fetching 5 blocks concatenates
    keys once and values once, whatever the number of layers."""
    import mlx_router.engine.prefix_cache as module

    disk = DiskTier(str(tmp_path), str(tmp_path), BLOCK, 1 << 20)
    cache = PrefixCache(layers=LAYERS, block_tokens=BLOCK, max_bytes=1 << 20, disk=disk)
    stored = list(range(100, 141))
    cache.insert(stored, kv_of(stored))
    concatenated: list[int] = []
    real = module.mx.concatenate
    monkeypatch.setattr(module.mx, "concatenate", lambda arrays, **kw: (concatenated.append(len(arrays)), real(arrays, **kw))[1])
    kv, cached = cache.fetch(stored)
    assert cached == 40 and kv is not None and concatenated == [5, 5]
    for got, want in zip(kv, kv_of(stored)):
        assert got.keys.shape == (1, HEADS, 40, DIM) and mx.array_equal(got.keys, want.keys[..., :40, :]).item()
    assert disk.write_one()
    written = mx.load(str(next(tmp_path.rglob("*.safetensors"))))
    assert sorted(written) == ["k", "v"] and written["k"].shape == (LAYERS, 1, HEADS, BLOCK, DIM)


def test_the_load_warm_up_goes_through_the_chat_template_else_a_raw_prompt(engine: LMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
    real, chat = engine.encode, []
    monkeypatch.setattr(engine, "encode", lambda r: (chat.append(r.messages is not None), real(r))[1])
    scheduler.warm_up(None)  # the default off a CUDA GPU: no warm-up
    assert chat == []
    scheduler.warm_up(2)
    assert chat and all(chat) and scheduler.active == 0

    def refuse(request: GenerationRequest) -> list[int]:
        chat.append(request.messages is not None)
        if request.messages is not None:
            raise ValueError("this template needs a system message")
        return real(request)

    chat.clear()
    monkeypatch.setattr(engine, "encode", refuse)
    scheduler.warm_up(2)
    assert chat == [True, False] and scheduler.active == 0
