"""One stream's decode step, in one process: mlx-lm's stream_generate, mlx-lm's BatchGenerator
as shipped (a mask array on every step), and BatchScheduler with and without the mask array.

Usage: python docs/perf/probes/decode_step.py MODEL_DIR [TOKENS]

Each line: ms per token over TOKENS generated tokens (after the first two), three rounds, each
round a fresh 512-token prompt. The BatchScheduler rows differ only in the decode mask: "no mask"
is the server's path (no row padded), "mask forced" hands attention the all-true mask array
that mlx-lm's batch cache builds (the path before the change).
"""

import sys
import time

sys.path.insert(0, ".")
import mlx.core as mx
from mlx_lm import stream_generate
from mlx_lm.generate import BatchGenerator

from mlx_router.engine import batch
from mlx_router.engine.batch import BatchScheduler
from mlx_router.engine.lm import LMEngine
from mlx_router.engine.types import BatchOptions, GenerationParams, GenerationRequest

engine = LMEngine.load(sys.argv[1], context_length=8192, chat_template=None)
model, tok = engine.model, engine.tokenizer
N = int(sys.argv[2]) if len(sys.argv) > 2 else 256
V = min(1000, engine.vocab_size)
NO_EOS = {t: -100.0 for t in engine.eos_token_ids}


def prompt(i: int, n: int = 512) -> list[int]:
    return [((i * 7919 + j * 31) % (V - 10)) + 5 for j in range(n)]


def per_token(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[1]) * 1000 / (len(stamps) - 2)


def direct(i: int) -> float:
    stamps = [time.perf_counter() for _ in stream_generate(model, tok, prompt(i), max_tokens=N)]
    return per_token(stamps)


def stock(i: int) -> float:
    g = BatchGenerator(model, stop_tokens=[], completion_batch_size=32)
    g.insert([prompt(i)], max_tokens=[N])
    stamps = []
    while True:
        _, responses = g.next()
        if responses:
            stamps.append(time.perf_counter())
            if responses[0].finish_reason:
                break
    g.close()
    return per_token(stamps)


schedulers: dict[str, BatchScheduler] = {}


def scheduled(i: int, label: str) -> float:
    s = schedulers.setdefault(label, BatchScheduler(engine, BatchOptions(prefix_cache_bytes=0)))
    s.add(GenerationRequest(f"{label}{i}", GenerationParams(max_tokens=N, logit_bias=NO_EOS), prompt_ids=tuple(prompt(i))))
    stamps = []
    while s.active:
        if s.step():
            stamps.append(time.perf_counter())
    return per_token(stamps)


def forced(i: int) -> float:
    unmasked = batch._DecodeCache._has_padding
    batch._DecodeCache._has_padding = lambda self: True  # type: ignore[method-assign]
    try:
        return scheduled(i, "forced")
    finally:
        batch._DecodeCache._has_padding = unmasked  # type: ignore[method-assign]


print(f"device {mx.default_device()}, {N} tokens per round, ms per token:", flush=True)
for label, fn in (
    ("stream_generate", direct),
    ("BatchGenerator (mlx-lm as shipped)", stock),
    ("BatchScheduler, no mask", lambda i: scheduled(i, "plain")),
    ("BatchScheduler, mask forced", forced),
):
    fn(0)  # shapes and kernels
    rounds = [fn(r) for r in range(1, 4)]
    print(f"  {label:36s} " + " ".join(f"{x:7.3f}" for x in rounds), flush=True)
