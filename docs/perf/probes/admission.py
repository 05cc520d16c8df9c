"""Admission cost as the prefix cache fills: mlx-lm's LRUPromptCache against the block cache.

Usage: python docs/perf/probes/admission.py MODEL_DIR [streams=32] [rounds=6] [prompt=512] [max_tokens=8]

Each round admits ``streams`` prompts that share only their first 3 tokens (like a chat
template's opening), runs them to the end (so their KV goes into the prefix cache), and prints
the time ``BatchScheduler.add`` took per request (tokenizing, the prefix-cache lookup and
whatever it copies, queuing) with the cache's fullness before the round.
"""

import statistics
import sys
import time

sys.path.insert(0, ".")
from mlx_lm.models.cache import LRUPromptCache  # noqa: E402

from mlx_router.engine.batch import BatchScheduler  # noqa: E402
from mlx_router.engine.lm import LMEngine  # noqa: E402
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest  # noqa: E402

args = sys.argv[1:] + [None] * 5
path = args[0]
streams, rounds, length, max_tokens = (int(a) if a else d for a, d in zip(args[1:5], (32, 6, 512, 8)))
engine = LMEngine.load(path, context_length=None, chat_template=None)
V = min(1000, engine.vocab_size)


def prompt(i: int) -> tuple[int, ...]:
    return (5, 6, 7) + tuple(((i * 7919 + j * 31) % (V - 10)) + 10 for j in range(length - 3))


for name in ("mlx-lm LRUPromptCache", "block cache"):
    scheduler = BatchScheduler(engine, BatchOptions(max_batch_size=streams, prefix_cache_entries=10_000))
    if name.startswith("mlx-lm"):
        scheduler.prefix_cache = LRUPromptCache(max_size=10_000, max_bytes=1 << 40)
    n = 0
    for r in range(rounds):
        cache = scheduler.prefix_cache
        fullness = f"{len(cache)} {'blocks' if name == 'block cache' else 'sequences'}, {cache.nbytes / 1e6:.0f} MB"
        times, hits = [], 0
        for _ in range(streams):
            n += 1
            request = GenerationRequest(f"r{n}", GenerationParams(max_tokens=max_tokens), prompt_ids=prompt(n))
            started = time.perf_counter()
            admission = scheduler.add(request)
            times.append((time.perf_counter() - started) * 1000)
            hits += admission.cached_tokens
        while scheduler.active:
            scheduler.step()
        print(
            f"{name:22s} round {r}: cache before {fullness:>24s}: add() mean {statistics.mean(times):7.2f} ms,"
            f" max {max(times):7.2f} ms, total {sum(times):8.1f} ms for {streams}; cached tokens {hits}",
            flush=True,
        )
