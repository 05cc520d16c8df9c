"""What every phase of a run shares: the model, its prompts, the environment of the MLX
processes, and the report they all write into."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helper_tools.bench.models import make_model
from helper_tools.bench.workload import Workload, eos_ids

__all__ = ["Messages", "Run", "blas_preload", "prepare"]

Messages = list[dict[str, str]]
"""One request's chat messages."""


@dataclass
class Run:
    """One benchmark run. Phases read the settings and prompts and write into ``report``."""

    args: argparse.Namespace
    model_path: Path
    workload: Workload
    work: Path
    """Logs, configs and the direct worker's files."""
    report: dict[str, Any]
    mlx_env: dict[str, str]
    """The environment of mlx-lm direct and mlx_lm.server (offline, the same BLAS as the router)."""
    eos_bias: list[int]
    """Token ids that get a logit bias of -100 (empty when the weights silence EOS)."""
    prompts: dict[int, list[list[Messages]]]
    """Per concurrency, ``--repeat`` rounds of one prompt per stream."""
    warmups: dict[int, list[Messages]]
    """Per concurrency, one round of other prompts of the measured length."""
    prefix: list[Messages]
    """Two requests sharing a ``--prefix-tokens`` system prompt."""


def blas_preload(choice: str) -> str | None:
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    try:
        from mlx_router.engine.client import openblas_library
    except ImportError:  # the router's own dependencies are missing: nothing to match
        return None
    return openblas_library()


def prepare(args: argparse.Namespace, report: dict[str, Any], work: Path) -> Run:
    model_path = (args.model or make_model(args.make, args.cache_dir, args.phase_timeout)).expanduser().resolve()
    workload = Workload(model_path)
    ignore = args.ignore_eos == "on" or (args.ignore_eos == "auto" and args.make is None)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    preload = blas_preload(args.blas_preload)
    if preload:
        env["LD_PRELOAD"] = preload
    run = Run(args=args, model_path=model_path, workload=workload, work=work, report=report, mlx_env=env,
              eos_bias=eos_ids(model_path, workload.tokenizer) if ignore else [],
              prompts={c: workload.rounds(c, args.prompt_tokens, args.repeat) for c in args.concurrency},
              # Warm-ups use the measured prompt length (other words, so no cache can help): MLX's CUDA
              # backend compiles kernels per new shape on first use, and every system should have paid
              # that before it is measured.
              warmups={c: workload.round(c, args.prompt_tokens, "warm") for c in args.concurrency},
              prefix=workload.prefix_pair(args.prefix_tokens))
    report["model"] = {"path": str(model_path), "made": args.make, "eos_bias": run.eos_bias, "ld_preload": preload,
                       "prompt_tokens": len(workload.templated(run.prompts[args.concurrency[0]][0][0])),
                       "prefix_prompt_tokens": len(workload.templated(run.prefix[0]))}
    return run
