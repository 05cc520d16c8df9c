"""32 requests admitted at once, in one process: BatchScheduler (its chunks returned by step(),
or emitted as each decode step is sampled, as the worker has them) against mlx-lm's
BatchGenerator (same prompts, chat-templated): time to each sequence's first token and the first
steps' times. Separates the scheduler from the serving path.

Usage: python docs/perf/probes/arrivals.py MODEL_DIR [STREAMS]
"""

import random
import sys
import time

sys.path.insert(0, ".")
from mlx_lm.generate import BatchGenerator

from mlx_router.engine.batch import BatchScheduler
from mlx_router.engine.lm import LMEngine
from mlx_router.engine.types import BatchOptions, GenerationChunk, GenerationParams, GenerationRequest

engine = LMEngine.load(sys.argv[1], context_length=None, chat_template=None)
STREAMS = int(sys.argv[2]) if len(sys.argv) > 2 else 32
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper"]


def requests(round_: int) -> list[GenerationRequest]:
    out = []
    for i in range(STREAMS):
        rng = random.Random(round_ * 1000 + i)
        text = f"[{round_}-{i}] " + " ".join(rng.choice(WORDS) for _ in range(40))
        params = GenerationParams(max_tokens=32, temperature=0)
        out.append(GenerationRequest(f"r{round_}-{i}", params, messages=({"role": "user", "content": text},)))
    return out


def report(label: str, started: float, firsts: dict[object, float], steps: list[float]) -> None:
    ttft = sorted((t - started) * 1000 for t in firsts.values())
    print(f"{label}: TTFT p50 {ttft[len(ttft) // 2]:.1f} ms, max {ttft[-1]:.1f} ms; first steps (ms) "
          + " ".join(f"{s:.1f}" for s in steps[:8]), flush=True)


for label, emit in (("scheduler, chunks returned by step()", False), ("scheduler, chunks emitted at decode", True)):
    scheduler = BatchScheduler(engine, BatchOptions())
    firsts: dict[object, float] = {}

    def record(chunks: list[GenerationChunk], firsts: dict[object, float] = firsts) -> None:
        for chunk in chunks:
            firsts.setdefault(chunk.request_id, time.perf_counter())

    if emit:
        scheduler.emit = record  # what the worker does: its pipe gets them
    for round_ in range(3):
        started = time.perf_counter()
        for request in requests(round_):
            scheduler.add(request)
        firsts.clear()
        steps = []
        while scheduler.active:
            t = time.perf_counter()
            record(scheduler.step())
            steps.append((time.perf_counter() - t) * 1000)
        report(f"{label}, round {round_}", started, firsts, steps)

for round_ in range(3):
    prompts = [engine.encode(r) for r in requests(10 + round_)]
    generator = BatchGenerator(engine.model, stop_tokens=[], completion_batch_size=max(32, STREAMS))
    started = time.perf_counter()
    generator.insert(prompts, [32] * len(prompts))
    firsts = {}
    steps = []
    while len(firsts) < len(prompts):
        t = time.perf_counter()
        _, responses = generator.next()
        steps.append((time.perf_counter() - t) * 1000)
        for response in responses:
            firsts.setdefault(response.uid, time.perf_counter())
    generator.close()
    report(f"BatchGenerator, round {round_}", started, firsts, steps)
