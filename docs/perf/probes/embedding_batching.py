"""How should a worker batch the inputs of an embedding request? Strategies, measured in process.

Builds a random-weight llama (mlx-lm, mean pooling) and a random-weight BERT (mlx-embeddings) of
``--hidden`` width and ``--layers`` layers, makes ``--inputs`` texts of 8 to 200 words, and
embeds them four ways, reporting passes, padded tokens (rows x longest row, summed over passes,
against the real tokens) and the best of ``--repeat`` wall times:

* one forward pass per input;
* one padded batch of every input (in request order);
* ``EmbeddingQueue`` (what the worker runs: sorted by length, rows at least half as long as the
  pass's longest, at most ``budget`` padded tokens a pass) with budgets 2048, 8192, unbounded.

Run from the repository root::

    .venv/bin/python docs/perf/probes/embedding_batching.py [--inputs 64 --hidden 128 --layers 2]

The figures in docs/design.md came from this probe on the 2-core development CPU.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlx.core as mx  # noqa: E402

from mlx_router.engine.embed import EmbeddingQueue, EncoderEmbedder, LMEmbedder  # noqa: E402
from mlx_router.engine.lm import LMEngine  # noqa: E402
from mlx_router.engine.types import EmbeddingRequest  # noqa: E402
from mlx_router.fabricate import CORPUS, make_tiny_llm  # noqa: E402
from tests.fixtures.tiny_embedding import make_tiny_bert  # noqa: E402


class Counting:
    """Wraps an embedder; counts the padded tokens each forward pass computes."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.padded, self.passes = inner, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, ids: mx.array, lengths: mx.array, pooling: Any) -> mx.array:
        self.padded += ids.shape[0] * ids.shape[1]
        self.passes += 1
        out = self.inner.embed(ids, lengths, pooling)
        mx.eval(out)
        return out


def _padded(rows: list[list[int]]) -> tuple[mx.array, mx.array]:
    width = max(len(row) for row in rows)
    return mx.array([row + [0] * (width - len(row)) for row in rows]), mx.array([len(row) for row in rows])


def one_per_input(embedder: Counting, rows: list[list[int]], texts: tuple[str, ...]) -> None:
    for row in rows:
        embedder.embed(*_padded([row]), None)


def one_batch(embedder: Counting, rows: list[list[int]], texts: tuple[str, ...]) -> None:
    embedder.embed(*_padded(rows), None)


def queue(budget: int) -> Callable[[Counting, list[list[int]], tuple[str, ...]], None]:
    def run(embedder: Counting, rows: list[list[int]], texts: tuple[str, ...]) -> None:
        work = EmbeddingQueue(embedder)  # type: ignore[arg-type]
        work.add(EmbeddingRequest("probe", texts, max_input_tokens=1 << 20, batch_tokens=budget))
        while work.active:
            work.step()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    rng = random.Random(0)
    words = CORPUS.split()
    texts = tuple(
        " ".join(rng.choice(words) for _ in range(rng.choice([8, 16, 32, 64, 128, 200]))) for _ in range(args.inputs)
    )
    root = Path(tempfile.mkdtemp())
    make_tiny_llm(root / "llama", hidden_size=args.hidden, num_layers=args.layers, max_position_embeddings=4096)
    make_tiny_bert(root / "bert", hidden_size=args.hidden, num_layers=args.layers, max_position_embeddings=512)
    llama = LMEmbedder.for_engine(
        LMEngine.load(str(root / "llama"), context_length=None, chat_template=None), str(root / "llama")
    )
    bert = EncoderEmbedder.load(str(root / "bert"), context_length=None)
    strategies = [("one pass per input", one_per_input), ("one padded batch", one_batch)] + [
        (f"EmbeddingQueue budget {budget}", queue(budget)) for budget in (2048, 8192, 1 << 30)
    ]
    for name, model in ((f"llama h{args.hidden} x{args.layers}, mean", llama), (f"bert h{args.hidden} x{args.layers}, own", bert)):
        rows = model.tokenize(list(texts))
        real = sum(len(row) for row in rows)
        model.dimensions  # noqa: B018  (first use: probe and compile outside the timings)
        for label, strategy in strategies:
            best, counted = float("inf"), Counting(model)
            for _ in range(args.repeat):
                counted.padded = counted.passes = 0
                started = time.perf_counter()
                strategy(counted, rows, texts)
                best = min(best, time.perf_counter() - started)
            print(
                f"{name:22s} {label:32s} passes={counted.passes:4d} padded={counted.padded / real:4.2f}x "
                f"{best:7.2f} s {real / best:8.0f} tokens/s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
