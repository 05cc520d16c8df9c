#!/usr/bin/env python3
"""Benchmark mlx-router against mlx-lm called directly and against ``mlx_lm.server``.

The code lives in ``helper_tools/bench/`` (one module per concern); ``-h`` lists the phases.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # runnable as `python helper_tools/benchmark.py`
    sys.path.insert(0, str(_REPO_ROOT))

from helper_tools.bench.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
