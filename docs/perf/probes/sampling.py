"""N sequences decoding in one BatchScheduler: median decode-step ms, greedy against sampled
requests, each sampled setting with one sampler per request ("private", mlx-lm then samples row
by row) and with the sampler the scheduler shares between unseeded requests ("shared").

Usage: python docs/perf/probes/sampling.py MODEL_DIR N
"""
import statistics, sys, time
sys.path.insert(0, ".")
import mlx.core as mx
from mlx_router.engine.batch import BatchScheduler
from mlx_router.engine.lm import LMEngine, make_sampler
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest

engine = LMEngine.load(sys.argv[1], context_length=4096, chat_template=None)
N = int(sys.argv[2]); T = 48
V = min(500, engine.vocab_size)
def prompt(i, n=32): return [((i * 7919 + j * 31) % (V - 10)) + 5 for j in range(n)]
def _run(label, params):
    kinds = params if callable(params) else (lambda i: params)
    s = BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0, max_batch_size=max(32, N)))
    out = []
    for rep in range(3):
        for i in range(N):
            s.add(GenerationRequest(f"{label}{rep}-{i}", kinds(i), prompt_ids=tuple(prompt(rep * 100 + i))))
        marks = []
        while s.active:
            s.step(); marks.append(time.perf_counter())
        steps = [b - a for a, b in zip(marks[5:], marks[6:])]
        out.append(statistics.median(steps) * 1000)
    print(f"{label:28s} median step ms per round: " + " ".join(f"{x:.2f}" for x in out), flush=True)
private = lambda self, params: make_sampler(params)  # noqa: E731
shared = BatchScheduler.sampler
def run(label, params, method):
    BatchScheduler.sampler = method
    _run(label, params)
run("greedy", GenerationParams(max_tokens=T, temperature=0), shared)
run("t0.7 private", GenerationParams(max_tokens=T, temperature=0.7), private)
run("t0.7 shared", GenerationParams(max_tokens=T, temperature=0.7), shared)
run("t0.7 top_p0.9 private", GenerationParams(max_tokens=T, temperature=0.7, top_p=0.9), private)
run("t0.7 top_p0.9 shared", GenerationParams(max_tokens=T, temperature=0.7, top_p=0.9), shared)



def mixed(label, kinds):
    """Half greedy and half sampled, or every request sampled unseeded but one seeded."""
    run(label, kinds, shared)

mixed("half greedy, half t0.7", lambda i: GenerationParams(max_tokens=T, temperature=0.7 if i % 2 else 0))
mixed("t0.7, one seeded", lambda i: GenerationParams(max_tokens=T, temperature=0.7, seed=1 if i == 0 else None))
