"""Does each new prompt length / batch size cost a JIT compile? TTFT per request, varying shapes."""
import sys, time
sys.path.insert(0, ".")
import mlx.core as mx
from mlx_lm import stream_generate
from mlx_router.engine.lm import LMEngine
from mlx_router.engine.batch import BatchScheduler
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest

engine = LMEngine.load(sys.argv[1], context_length=None, chat_template=None)
model, tok = engine.model, engine.tokenizer
V = min(1000, engine.vocab_size)
def prompt(i, n):
    return [((i * 7919 + j * 31) % (V - 10)) + 5 for j in range(n)]
# warm both paths once
for _ in stream_generate(model, tok, prompt(1, 300), max_tokens=2): pass
s = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0))
def sched_ttft(i, n, batch=1):
    t0 = time.perf_counter()
    for b in range(batch):
        s.add(GenerationRequest(f"r{i}-{b}-{time.time()}", GenerationParams(max_tokens=2), prompt_ids=tuple(prompt(i * 10 + b, n + b))))
    first = None
    while s.active:
        chunks = s.step()
        if chunks and first is None:
            first = (time.perf_counter() - t0) * 1000
    return first, (time.perf_counter() - t0) * 1000
sched_ttft(0, 300)
def direct_ttft(i, n):
    t0 = time.perf_counter()
    for _ in stream_generate(model, tok, prompt(i, n), max_tokens=1): pass
    return (time.perf_counter() - t0) * 1000
print("len   direct_ttft   sched_ttft(first,total)")
for i, n in enumerate([500, 500, 501, 502, 503, 503, 510, 520, 520, 64, 65, 64, 700, 701, 702]):
    d = direct_ttft(100 + i, n)
    f, t = sched_ttft(200 + i, n)
    print(f"{n:4d}   {d:8.1f}     {f:8.1f} {t:8.1f}", flush=True)
print("batch sizes (len 100 + b), scheduler:")
for batch in (2, 3, 3, 4, 5, 5, 8, 8):
    f, t = sched_ttft(300 + batch, 100, batch)
    print(f"batch {batch}: first {f:.1f} total {t:.1f} ms", flush=True)
