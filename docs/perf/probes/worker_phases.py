"""Where does a request's time go in the worker? Timings on one model, no HTTP."""
import sys, time, json, statistics
sys.path.insert(0, ".")
import mlx.core as mx
from mlx_lm import load, stream_generate
from mlx_lm.generate import BatchGenerator
from mlx_router.engine.lm import LMEngine
from mlx_router.engine.batch import BatchScheduler
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest

path = sys.argv[1]
engine = LMEngine.load(path, context_length=None, chat_template=None)
model, tok = engine.model, engine.tokenizer
V = min(1000, engine.vocab_size)
def prompt(i, n=512):
    return [((i * 7919 + j * 31) % (V - 10)) + 5 for j in range(n)]

def timeit(label, fn, reps=3):
    out = []
    for r in range(reps):
        mx.synchronize(); t = time.perf_counter(); fn(r); mx.synchronize(); out.append((time.perf_counter() - t) * 1000)
    print(f"{label:55s} " + " ".join(f"{x:8.1f}" for x in out) + " ms", flush=True)

# 1) direct generate_step TTFT (first token) and 128 tokens
def direct_first(r):
    for resp in stream_generate(model, tok, prompt(100 + r), max_tokens=1): pass
timeit("direct stream_generate: 512 prompt -> 1 token", direct_first)
def direct_128(r):
    for resp in stream_generate(model, tok, prompt(200 + r), max_tokens=128): pass
timeit("direct stream_generate: 512 prompt -> 128 tokens", direct_128)

# 2) raw BatchGenerator, one sequence
def bg_first(r, n_tokens=1):
    g = BatchGenerator(model, stop_tokens=[[engine.vocab_size - 1]], completion_batch_size=32, prefill_batch_size=8)
    g.insert([prompt(300 + r)], max_tokens=[n_tokens])
    steps = 0
    while True:
        steps += 1
        _, gen = g.next()
        if any(x.finish_reason for x in gen): break
    g.close()
timeit("BatchGenerator (new each time): 512 -> 1 token", bg_first)
timeit("BatchGenerator (new each time): 512 -> 128 tokens", lambda r: bg_first(r + 10, 128))
g = BatchGenerator(model, stop_tokens=[[engine.vocab_size - 1]], completion_batch_size=32, prefill_batch_size=8)
def bg_reuse(r, n_tokens=1):
    g.insert([prompt(400 + r)], max_tokens=[n_tokens])
    while True:
        _, gen = g.next()
        if any(x.finish_reason for x in gen): break
timeit("BatchGenerator (reused): 512 -> 1 token", bg_reuse)
timeit("BatchGenerator (reused): 512 -> 128 tokens", lambda r: bg_reuse(r + 10, 128))
def bg_steps(r):
    g.insert([prompt(500 + r)], max_tokens=[4])
    t0 = time.perf_counter(); marks = []
    while True:
        _, gen = g.next(); marks.append((time.perf_counter() - t0) * 1000)
        if any(x.finish_reason for x in gen): break
    print("   next() marks ms:", [round(m, 1) for m in marks])
timeit("BatchGenerator (reused): 512 -> 4 tokens, per next()", bg_steps, reps=2)

# 3) our scheduler (prefix cache on / off)
for cache_bytes in (0, 1 << 30):
    s = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=cache_bytes))
    def sched(r, n=1, s=s):
        req = GenerationRequest(f"r{r}-{time.time()}", GenerationParams(max_tokens=n), prompt_ids=tuple(prompt(600 + r)))
        t0 = time.perf_counter(); s.add(req); t_add = (time.perf_counter() - t0) * 1000
        marks = []
        while s.active:
            chunks = s.step(); marks.append(round((time.perf_counter() - t0) * 1000, 1))
        print(f"   add {t_add:.1f} ms, step marks {marks[:6]}{'...' if len(marks) > 6 else ''} last {marks[-1]}")
    timeit(f"BatchScheduler prefix_cache={cache_bytes}: 512 -> 1", sched)
    timeit(f"BatchScheduler prefix_cache={cache_bytes}: 512 -> 128", lambda r, s=s: sched(r + 20, 128, s), reps=2)
    # chat request (template) with the same system prompt twice
    def chat(r, s=s):
        req = GenerationRequest(f"c{r}-{time.time()}", GenerationParams(max_tokens=4), messages=({"role": "system", "content": "word " * 400}, {"role": "user", "content": f"q{r}"}))
        t0 = time.perf_counter(); adm = s.add(req); t_add = (time.perf_counter() - t0) * 1000
        while s.active: s.step()
        print(f"   chat cached={adm.cached_tokens}/{adm.prompt_tokens} add {t_add:.1f} ms total {(time.perf_counter()-t0)*1000:.1f} ms")
    timeit(f"BatchScheduler prefix_cache={cache_bytes}: chat 2k prefix -> 4", chat)
