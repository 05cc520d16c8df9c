"""The models ``--make`` writes: random weights of a given shape, made once per cache folder.

Every kind comes from :mod:`mlx_router.fabricate`, with the output rows of the special tokens at
zero, so greedy decoding never stops before ``max_tokens``. A kind is written by a subprocess
(``benchmark.py --make-worker``), so its MLX memory is gone before anything is measured.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from helper_tools.bench import SCRIPT
from mlx_router.fabricate import LLAMA_3_1_8B, LLAMA_3_2_1B, make_random_llama, make_tiny_llm

__all__ = ["KINDS", "make_model", "make_worker"]


KINDS: dict[str, Callable[[Path], Path]] = {
    "tiny": partial(make_tiny_llm, max_position_embeddings=8192),
    "llama-1b": partial(make_random_llama, shape=LLAMA_3_2_1B),
    "llama-8b-4bit": partial(make_random_llama, shape=LLAMA_3_1_8B, bits=4),
}
"""``--make`` choices: tiny (2 layers of width 64, float32), Llama-3.2-1B in bfloat16,
Llama-3.1-8B in 4-bit."""


def make_model(kind: str, cache_dir: Path, timeout: float) -> Path:
    """The folder of a random-weight model of kind ``kind``, written once by a subprocess."""
    target = cache_dir / kind / ("tiny-llama" if kind == "tiny" else f"random-{kind}")
    if not (target / ".complete").exists():
        subprocess.run([sys.executable, str(SCRIPT), "--make-worker", kind, str(target)], check=True, timeout=timeout)
    return target


def make_worker(kind: str, target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    KINDS[kind](target)
    (target / ".complete").write_text("ok\n")
    return 0
