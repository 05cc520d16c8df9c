"""What MLX's buffer cache being emptied costs on the served path, in one process.

mlx-lm empties MLX's buffer cache (``mx.clear_cache()``) after every prefill chunk, and so did
the scheduler's padded prefill. On the CUDA backend every buffer the next step needs is then a
fresh ``cudaMallocManaged`` (and the cached ones a ``cudaFree`` each); on Metal and the CPU it is
cheap. This probe runs the same requests through :class:`BatchScheduler` three ways: emptying as
mlx-lm does, never emptying, and the scheduler's default (``BatchOptions.buffer_cache_bytes``:
buffers kept up to a cache limit).

Usage: python docs/perf/probes/clear_cache.py MODEL_DIR [SESSION_TOKENS]

Per mode: TTFT of a cold 2k-token prompt, the same prefix with new questions (cache hits), a
second cold prefix and its hit, three cold 512-token prompts, 32 prompts of 512 tokens admitted
at once (TTFT p50 / max and aggregate tok/s over 64 tokens each) against mlx-lm's
``BatchGenerator`` in the same mode, and a SESSION_TOKENS-token prompt then its hit.
"""

import sys
import time

sys.path.insert(0, ".")
import mlx.core as mx  # noqa: E402
from mlx_lm.generate import BatchGenerator  # noqa: E402

from mlx_router.engine.batch import BatchScheduler  # noqa: E402
from mlx_router.engine.lm import LMEngine  # noqa: E402
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest  # noqa: E402

SESSION = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
engine = LMEngine.load(sys.argv[1], context_length=max(8192, 2 * SESSION), chat_template=None)
V = min(1000, engine.vocab_size)
NO_EOS = {t: -100.0 for t in engine.eos_token_ids}
shipped_clear = mx.clear_cache
n_request = 0


def prompt(i: int, n: int) -> list[int]:
    return [((i * 7919 + j * 31) % (V - 10)) + 5 for j in range(n)]


def ttft(s: BatchScheduler, ids: list[int], max_tokens: int = 4) -> tuple[float, int]:
    global n_request
    n_request += 1
    started = time.perf_counter()
    params = GenerationParams(max_tokens=max_tokens, logit_bias=NO_EOS)
    admission = s.add(GenerationRequest(f"r{n_request}", params, prompt_ids=tuple(ids)))
    first = None
    while s.active:
        if s.step() and first is None:
            first = (time.perf_counter() - started) * 1000
    return first or 0.0, admission.cached_tokens


def crowd(s: BatchScheduler, seed: int, streams: int = 32, tokens: int = 64) -> str:
    global n_request
    firsts: dict[str, float] = {}
    count = 0

    def record(chunks: list) -> None:
        nonlocal count
        for c in chunks:
            firsts.setdefault(c.request_id, time.perf_counter())
            count += 1

    s.emit = record
    started = time.perf_counter()
    for i in range(streams):
        n_request += 1
        params = GenerationParams(max_tokens=tokens, logit_bias=NO_EOS)
        s.add(GenerationRequest(f"c{n_request}", params, prompt_ids=tuple(prompt(seed + i, 512))))
    while s.active:
        record(s.step())
    elapsed = time.perf_counter() - started
    s.emit = None
    t = sorted((v - started) * 1000 for v in firsts.values())
    return f"TTFT p50 {t[len(t) // 2]:.0f} max {t[-1]:.0f} ms, {count / elapsed:.0f} tok/s"


def reference(seed: int, streams: int = 32, tokens: int = 64) -> str:
    g = BatchGenerator(engine.model, stop_tokens=[], completion_batch_size=max(32, streams))
    started = time.perf_counter()
    g.insert([prompt(seed + i, 512) for i in range(streams)], [tokens] * streams)
    firsts: dict[int, float] = {}
    count = 0
    while count < streams * tokens:
        _, responses = g.next()
        for r in responses:
            firsts.setdefault(r.uid, time.perf_counter())
            count += 1
    elapsed = time.perf_counter() - started
    g.close()
    t = sorted((v - started) * 1000 for v in firsts.values())
    return f"TTFT p50 {t[len(t) // 2]:.0f} max {t[-1]:.0f} ms, {count / elapsed:.0f} tok/s"


MODES = [("emptied after every prefill chunk (mlx-lm's way)", True, 0),
         ("never emptied (MLX's default cache limit)", False, 0),
         ("the scheduler's default (buffer_cache_bytes null)", True, None)]
for m, (label, clears, keep) in enumerate(MODES):
    shipped_clear()
    mx.clear_cache = shipped_clear if clears else (lambda: None)
    options = BatchOptions(prefill_buckets=True, prefix_cache_bytes=4 << 30, buffer_cache_bytes=keep)
    s = BatchScheduler(engine, options)
    started = time.perf_counter()
    while s.idle_work():
        pass
    print(f"== {label}: warm-up {time.perf_counter() - started:.2f} s", flush=True)
    base = 1000 * (m + 1)
    a = prompt(base, 2048)
    line = [f"cold 2k {ttft(s, a + prompt(base + 1, 26))[0]:.0f}"]
    for q in (15, 20, 15):
        t, cached = ttft(s, a + prompt(base + 2 + q, q))
        line.append(f"hit(+{q}, {cached} cached) {t:.0f}")
    b = prompt(base + 50, 2048)
    line.append(f"cold 2k {ttft(s, b + prompt(base + 51, 26))[0]:.0f}")
    line.append(f"hit {ttft(s, b + prompt(base + 52, 15))[0]:.0f}")
    print("  2k prefix, TTFT ms: " + ", ".join(line), flush=True)
    print("  cold 512, TTFT ms: " + ", ".join(f"{ttft(s, prompt(base + 60 + i, 512))[0]:.0f}" for i in range(3)), flush=True)
    for r in range(2):
        print(f"  32 x 512 at once, scheduler round {r}: {crowd(s, base + 100 + 40 * r)}", flush=True)
        print(f"  32 x 512 at once, BatchGenerator round {r}: {reference(base + 300 + 40 * r)}", flush=True)
    c = prompt(base + 500, SESSION)
    cold = ttft(s, c + prompt(base + 501, 30))[0]
    hits = [ttft(s, c + prompt(base + 502 + i, 30 + 10 * i)) for i in range(3)]
    print(f"  {SESSION}-token session, TTFT ms: cold {cold:.0f}, hits "
          + ", ".join(f"{t:.0f} ({k} cached)" for t, k in hits), flush=True)
    print(f"  MLX memory: active {mx.get_active_memory() / 1e9:.2f} GB, cache {mx.get_cache_memory() / 1e9:.2f} GB, "
          f"peak {mx.get_peak_memory() / 1e9:.2f} GB", flush=True)
    del s
mx.clear_cache = shipped_clear
print("mlx", mx.__version__, mx.default_device(), flush=True)
