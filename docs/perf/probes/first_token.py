"""Where the first token's time goes, and the per-step cost at one stream, in one process.

Usage: python docs/perf/probes/first_token.py MODEL_DIR

A. stream_generate: time to the first token for new and repeated prompt lengths; decode tok/s.
B. BatchScheduler without padded prefill widths: the same lengths.
C. BatchScheduler with padded widths, after the idle warm-up (its duration is printed).
D. A 2k-token cached prefix with questions of different lengths (padded widths, prefix cache on).
E. One stream decoding 128 tokens through BatchScheduler.step(): ms per step against
   stream_generate's, and a cProfile of the step loop (host time by function).
"""

import cProfile
import pstats
import sys
import time

sys.path.insert(0, ".")
import mlx.core as mx  # noqa: E402
from mlx_lm import stream_generate  # noqa: E402

from mlx_router.engine.batch import BatchScheduler  # noqa: E402
from mlx_router.engine.lm import LMEngine  # noqa: E402
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest  # noqa: E402

engine = LMEngine.load(sys.argv[1], context_length=8192, chat_template=None)
model, tok = engine.model, engine.tokenizer
V = min(1000, engine.vocab_size)
LENGTHS = [500, 500, 501, 503, 503, 700, 701, 64, 65, 64]


def prompt(i: int, n: int) -> list[int]:
    return [((i * 7919 + j * 31) % (V - 10)) + 5 for j in range(n)]


def direct_ttft(ids: list[int]) -> float:
    started = time.perf_counter()
    for _ in stream_generate(model, tok, ids, max_tokens=1):
        pass
    return (time.perf_counter() - started) * 1000


n_request = 0


def sched_ttft(s: BatchScheduler, ids: list[int], max_tokens: int = 1) -> tuple[float, float, int]:
    global n_request
    n_request += 1
    started = time.perf_counter()
    admission = s.add(GenerationRequest(f"r{n_request}", GenerationParams(max_tokens=max_tokens), prompt_ids=tuple(ids)))
    added = (time.perf_counter() - started) * 1000
    first = None
    while s.active:
        if s.step() and first is None:
            first = (time.perf_counter() - started) * 1000
    return added, first or 0.0, admission.cached_tokens


direct_ttft(prompt(1, 300))
print("A. stream_generate TTFT ms by prompt length:", flush=True)
print("  " + ", ".join(f"{n}: {direct_ttft(prompt(10 + i, n)):.1f}" for i, n in enumerate(LENGTHS)), flush=True)

for label, options in (
    ("B. scheduler, unpadded", BatchOptions(prefix_cache_bytes=0, prefill_buckets=False)),
    ("C. scheduler, padded widths", BatchOptions(prefix_cache_bytes=0, prefill_buckets=True)),
):
    s = BatchScheduler(engine, options)
    started = time.perf_counter()
    warmed = 0
    while s.idle_work():
        warmed += 1
    print(f"{label}: idle warm-up {warmed} widths in {time.perf_counter() - started:.2f} s", flush=True)
    sched_ttft(s, prompt(2, 300))
    results = [sched_ttft(s, prompt(100 + i, n)) for i, n in enumerate(LENGTHS)]
    print("  TTFT ms by length: " + ", ".join(f"{n}: {r[1]:.1f}" for n, r in zip(LENGTHS, results)), flush=True)

s = BatchScheduler(engine, BatchOptions(prefill_buckets=True, prefill_warmup=True))
while s.idle_work():
    pass
system = prompt(7, 2048)
print("D. 2048-token prefix, then questions (padded widths, prefix cache):", flush=True)
for i, q in enumerate([30, 30, 37, 45, 30]):
    added, first, cached = sched_ttft(s, system + prompt(500 + i, q))
    print(f"  +{q} tokens: add {added:.1f} ms, TTFT {first:.1f} ms, cached {cached}", flush=True)

print("E. one stream, 512-token prompt, 128 tokens:", flush=True)
for _ in range(2):
    started = time.perf_counter()
    marks = []
    for _ in stream_generate(model, tok, prompt(900, 512), max_tokens=128):
        marks.append(time.perf_counter())
    print(f"  stream_generate: {(marks[-1] - marks[0]) / (len(marks) - 1) * 1000:.3f} ms per token", flush=True)
s = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
for rep in range(3):
    s.add(GenerationRequest(f"d{rep}", GenerationParams(max_tokens=128), prompt_ids=tuple(prompt(901 + rep, 512))))
    marks = []
    profiler = cProfile.Profile() if rep == 2 else None
    if profiler:
        profiler.enable()
    while s.active:
        if s.step():
            marks.append(time.perf_counter())
    if profiler:
        profiler.disable()
    print(f"  BatchScheduler.step: {(marks[-1] - marks[0]) / (len(marks) - 1) * 1000:.3f} ms per token", flush=True)
stats = pstats.Stats(profiler)
stats.sort_stats("tottime").print_stats(18)
print("mlx", mx.__version__, mx.default_device(), flush=True)
