"""A fresh worker's first requests and a long cached session, in one process, phase by phase.

Usage: python docs/perf/probes/cached_turn.py MODEL_DIR [SESSION_TOKENS] [--fused-first]

The worker's path: ``LMEngine.load``, ``BatchScheduler`` with the backend's defaults (padded
prefill widths and MLX's buffer cache kept on a CUDA GPU), the load's warm-up ("Hello", 4 tokens).

A. Right after the load's warm-up, before any idle warm-up: one request per new prompt length
   (each a width of its own), then each length again. Widths not yet prepared attend through
   matrix products; with --fused-first through the fused kernel (cuDNN on a GPU), as before.
B. The idle warm-up: seconds for each width.
C. An agent session: a SESSION_TOKENS-token prompt, then turns adding ~43 tokens each. Every turn
   is split into the prefix cache's fetch (evaluated), the rest of the admission, and the steps
   to the first token. Before turns 3 and 5 the disk tier writes every pending block (the idle
   time a real session has); turn 6 follows a fresh scheduler whose memory tier is empty, so its
   prefix comes from the disk tier.
"""

import sys
import tempfile
import time

sys.path.insert(0, ".")
import mlx.core as mx  # noqa: E402

from mlx_router.engine.batch import BatchScheduler  # noqa: E402
from mlx_router.engine.lm import LMEngine  # noqa: E402
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--")]
FUSED_FIRST = "--fused-first" in sys.argv
SESSION = int(args[1]) if len(args) > 1 else 16384
started = time.perf_counter()
engine = LMEngine.load(args[0], context_length=SESSION + 4096, chat_template=None)
V = min(1000, engine.vocab_size)
disk_dir = tempfile.mkdtemp(prefix="probe-prefix-")
OPTIONS = BatchOptions(prefix_cache_directory=disk_dir, prefix_cache_disk_bytes=8 << 30, prefill_warmup=True)


def prompt(i: int, n: int) -> list[int]:
    return [((i * 7919 + j * 31) % (V - 10)) + 5 for j in range(n)]


def new_scheduler() -> BatchScheduler:
    s = BatchScheduler(engine, OPTIONS)
    fetch = s.prefix_cache.fetch

    def timed_fetch(tokens):  # evaluated, so the time is the fetch's own
        t = time.perf_counter()
        cache, cached = fetch(tokens)
        if cache is not None:
            mx.eval([c.state for c in cache])
        timings["fetch"] = (time.perf_counter() - t) * 1000
        return cache, cached

    s.prefix_cache.fetch = timed_fetch
    return s


timings: dict[str, float] = {}
n_request = 0


def request(s: BatchScheduler, ids: list[int], max_tokens: int = 1) -> str:
    """Admission and each step to the first token, ms."""
    global n_request
    n_request += 1
    timings.clear()
    t0 = time.perf_counter()
    admission = s.add(GenerationRequest(f"r{n_request}", GenerationParams(max_tokens=max_tokens), prompt_ids=tuple(ids)))
    added = (time.perf_counter() - t0) * 1000
    steps, first = [], None
    while s.active:
        t = time.perf_counter()
        chunks = s.step()
        steps.append((time.perf_counter() - t) * 1000)
        if chunks and first is None:
            first = (time.perf_counter() - t0) * 1000
    fetch = timings.get("fetch")
    return (f"TTFT {first:.1f} ms = admission {added:.1f}" + (f" (fetch {fetch:.1f})" if fetch is not None else "")
            + f" + steps {' / '.join(f'{x:.1f}' for x in steps[:3])}; cached {admission.cached_tokens} of {len(ids)}")


s = new_scheduler()
t = time.perf_counter()
s.run_to_end(GenerationRequest("warmup", GenerationParams(max_tokens=4), prompt="Hello"))
print(f"load {t - started:.1f} s, the load's warm-up {time.perf_counter() - t:.2f} s; "
      f"{'fused' if FUSED_FIRST else 'direct'} attention for widths not prepared yet", flush=True)
if FUSED_FIRST:
    s._cold.clear()
print("A. first requests after the load (each length new), then again:", flush=True)
LENGTHS = [511, 300, 1000, 120, 2000]
for i, n in enumerate(LENGTHS):
    print(f"  {n} tokens, new:   {request(s, prompt(10 + i, n))}", flush=True)
for i, n in enumerate(LENGTHS):
    print(f"  {n} tokens, again: {request(s, prompt(20 + i, n))}", flush=True)

print("B. idle warm-up, seconds per width:", flush=True)
per_width = []
while s.warming:
    width = s._warm_widths[0]
    t = time.perf_counter()
    s.idle_work()
    per_width.append(f"{width}: {time.perf_counter() - t:.2f}")
print("  " + ", ".join(per_width), flush=True)
print(f"  disk tier: {s.prefix_cache.disk.pending if s.prefix_cache.disk else '-'} blocks pending", flush=True)
while s.idle_work():
    pass

print(f"C. agent session on a {SESSION}-token prompt:", flush=True)
history = prompt(77, SESSION)
for turn in range(1, 9):
    if turn in (3, 5):
        t, n = time.perf_counter(), s.prefix_cache.disk.pending
        while s.idle_work():
            pass
        print(f"  (idle: {n} blocks written in {time.perf_counter() - t:.2f} s)", flush=True)
    if turn == 6:
        s = new_scheduler()
        s._warm_widths.clear()
        s._cold.clear()
        print("  (a fresh scheduler: the memory tier is empty)", flush=True)
    history = history + prompt(1000 + turn, 43)
    print(f"  turn {turn}: {request(s, history, max_tokens=2)}", flush=True)
print("mlx", mx.__version__, mx.default_device(), flush=True)
