"""What constrained decoding costs per token inside the batch.

Usage: python docs/perf/probes/constraint_overhead.py MODEL_DIR [--tokens N] [--batches 1,8,32]

Runs mlx-router's own BatchScheduler (no server, no IPC) on one model and measures decode
tokens/s for N concurrent sequences three ways: unconstrained, every sequence under a
``json_object`` grammar, and half of them under it (mixed batch). Prompts are token ids and EOS
is banned with logit_bias; a constrained sequence still ends once its JSON object is complete,
so the rate is taken over the decode steps in which all N sequences ran. Prints one line per
(batch, mode) with tokens/s and the ratio to the unconstrained run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlx_router.engine.batch import BatchScheduler  # noqa: E402
from mlx_router.engine.constrain import ConstraintProcessor, _unpack  # noqa: E402
from mlx_router.engine.lm import LMEngine  # noqa: E402
from mlx_router.engine.types import BatchOptions, Constraint, GenerationParams, GenerationRequest  # noqa: E402

JSON_OBJECT = Constraint("json", schema='{"type": "object"}')
LASTING = Constraint("json", schema='{"type": "object", "properties": {"text": {"type": "string", "minLength": 4000}}, '
                                    '"required": ["text"], "additionalProperties": false}')
"""A JSON answer that cannot be complete before thousands of characters: every sequence runs to
max_tokens, so batches keep their size."""


GRAMMAR = LASTING


def run(engine: LMEngine, batch: int, constrained: int, tokens: int, tag: str) -> float:
    scheduler = BatchScheduler(engine, BatchOptions(max_batch_size=max(batch, 1), prefill_batch_size=batch, prefix_cache_bytes=0))
    vocab = min(engine.vocab_size, 1000)
    ban = {t: -100.0 for t in engine.eos_token_ids}
    for i in range(batch):
        params = GenerationParams(max_tokens=tokens, logit_bias=ban, constraint=GRAMMAR if i < constrained else None)
        ids = tuple(((i * 7919 + j * 31) % (vocab - 10)) + 5 for j in range(64))
        scheduler.add(GenerationRequest(f"{tag}-{i}", params, prompt_ids=ids))
    # Decode rate over the steps where every sequence was still running: a constrained sequence
    # may finish early (its JSON is complete and EOS is the only token left), which would shrink
    # the batch and make a rate over all steps compare different batch sizes.
    started, full_steps, full_time = False, 0, 0.0
    last = time.perf_counter()
    while scheduler.active:
        chunks = scheduler.step()
        now = time.perf_counter()
        if started and len(chunks) == batch and all(c.finish_reason is None for c in chunks):
            full_steps += 1
            full_time += now - last
        started = started or bool(chunks)
        last = now
    if full_steps < min(8, tokens // 2):
        raise SystemExit(f"only {full_steps} steps ran with the whole batch; use a grammar that lasts")
    return batch * full_steps / full_time


class Timed:
    """Wraps ConstraintProcessor.__call__ to add up the wall time spent in it (sync included)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._orig = ConstraintProcessor.__call__

    def install(self) -> None:
        orig = self._orig

        def timed(proc: ConstraintProcessor, tokens: mx.array, logits: mx.array) -> mx.array:
            started = time.perf_counter()
            out = orig(proc, tokens, logits)
            self.seconds += time.perf_counter() - started
            self.calls += 1
            return out

        ConstraintProcessor.__call__ = timed  # type: ignore[method-assign]


PHASES = {"sync": 0.0, "grammar": 0.0, "mask": 0.0}
VARIANT = "full"
"""Diagnostics: ``no-sync`` never reads the sampled token (the mask stays the first one: wrong
output, but it shows what waiting for the token costs); ``no-mask`` reads it and feeds the
grammar but leaves the logits alone; ``sync-only`` only reads the token."""


class Profiled(ConstraintProcessor):
    """The same processor with its phases timed: waiting for the last token (a device sync),
    the grammar (consume + bitmask), building the masked logits (host array, graph node)."""

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        from llguidance.numpy import fill_next_token_bitmask

        t0 = time.perf_counter()
        token = int(tokens[-1].item()) if self._started and VARIANT != "no-sync" else None
        t1 = time.perf_counter()
        self._started = True
        PHASES["sync"] += t1 - t0
        if VARIANT == "sync-only":
            return logits
        if token is not None:
            self.matcher.consume_token(token)
        fill_next_token_bitmask(self.matcher, self.bitmask)
        if VARIANT == "no-mask":
            return logits
        size = logits.shape[-1]
        mask = _unpack(self.bitmask[0], size)
        t2 = time.perf_counter()
        out = mx.where(mask, logits, mx.array(-float("inf"), dtype=logits.dtype))
        t3 = time.perf_counter()
        PHASES["grammar"] += t2 - t1
        PHASES["mask"] += t3 - t2
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--grammar", choices=("lasting", "json-object"), default="lasting",
                   help="lasting: an object with a 4000-character string (default); json-object: any object")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--phases", action="store_true", help="also time the processor's phases (sync, grammar, mask)")
    p.add_argument("--variant", choices=("full", "no-sync", "no-mask", "sync-only"), default="full",
                   help="diagnostics for --phases (see VARIANT)")
    args = p.parse_args(argv)
    global GRAMMAR
    GRAMMAR = LASTING if args.grammar == "lasting" else JSON_OBJECT
    engine = LMEngine.load(str(args.model), context_length=None, chat_template=None)
    print(f"mlx {mx.__version__} {mx.default_device()} model={args.model.name} tokens={args.tokens}", flush=True)
    timer = Timed()
    timer.install()
    batches = [int(b) for b in args.batches.split(",")]
    for batch in batches:  # warm-up: every batch shape, plain and constrained
        run(engine, batch, 0, 8, f"warm{batch}")
        run(engine, batch, batch, 8, f"warmc{batch}")
    for batch in batches:
        base = None
        for mode, constrained in (("plain", 0), ("all-json", batch), ("half-json", batch // 2)):
            if mode == "half-json" and batch < 2:
                continue
            timer.seconds, timer.calls = 0.0, 0
            started = time.perf_counter()
            rates = [run(engine, batch, constrained, args.tokens, f"{batch}{mode}{r}") for r in range(args.repeat)]
            share = timer.seconds / (time.perf_counter() - started)
            per_call = timer.seconds / timer.calls * 1e6 if timer.calls else 0.0
            rate = statistics.median(rates)
            base = rate if mode == "plain" else base
            print(f"batch {batch:3d}  {mode:9s}  {rate:9.1f} tok/s  x{rate / base:.3f}  in processor {share:5.1%}"
                  f" ({per_call:.0f} us/call)  (rounds: {', '.join(f'{r:.1f}' for r in rates)})", flush=True)
    if args.phases:
        import mlx_router.engine.lm as lm

        global VARIANT  # noqa: PLW0603
        lm.ConstraintProcessor = Profiled  # type: ignore[misc]
        VARIANT = args.variant
        print(f"phases with variant {VARIANT}")
        for batch in batches:
            for key in PHASES:
                PHASES[key] = 0.0
            started = time.perf_counter()
            rate = run(engine, batch, batch, args.tokens, f"phases{batch}")
            total = time.perf_counter() - started
            calls = batch * args.tokens
            print(f"batch {batch:3d}  all-json phases per call: " + ", ".join(
                f"{k} {v / calls * 1e6:.0f} us ({v / total:.0%})" for k, v in PHASES.items()) + f"; {rate:.1f} tok/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
