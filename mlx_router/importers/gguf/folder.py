"""The model folder: written into a temporary folder next to the destination, checked to build in
mlx-lm, marked complete, then renamed into place, so a crash never leaves a half folder that a
later run would mistake for a model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from mlx_router.importers.gguf.config import build_config, llama3_rope_scaling
from mlx_router.importers.gguf.reader import GGUFHeader, GGUFImportError, tensor_index
from mlx_router.importers.gguf.tokenizer import build_tokenizer, tokenizer_files
from mlx_router.importers.gguf.weights import float_linear_modules, load_weights, quantization_config, save_weights

logger = logging.getLogger(__name__)

__all__ = ["IMPORTER_VERSION", "IMPORT_MARKER", "is_complete", "replace_dir", "write_folder", "write_json"]

#: Bumped when the folder layout written by this importer changes.
IMPORTER_VERSION = 1
#: Written into every imported folder; its presence marks the folder as complete.
IMPORT_MARKER = "gguf_import.json"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def is_complete(folder: Path) -> bool:
    """True for a folder this importer finished (the marker is written last)."""
    return (folder / IMPORT_MARKER).is_file() and (folder / "config.json").is_file()


def _verify_loadable(folder: Path) -> None:
    """Build the model with mlx-lm (lazily, weights untouched) so a bad folder never lands."""
    try:
        from mlx_lm.utils import load_model
    except ImportError:  # pragma: no cover - mlx-lm is a hard dependency of the router
        logger.warning("mlx-lm not importable; skipping the load check of %s", folder)
        return
    try:
        load_model(folder, lazy=True)
    except Exception as exc:
        raise GGUFImportError(f"imported folder does not load in mlx-lm: {exc}") from exc


def write_folder(gguf_path: Path, header: GGUFHeader, target: Path, dequantize: bool) -> None:
    """Write the complete model folder into ``target`` (an empty temporary directory)."""
    tensors = tensor_index(header)
    weights, bits_by_module, rope_freqs = load_weights(gguf_path, header, dequantize)
    quant = quantization_config(bits_by_module, float_linear_modules(weights, bits_by_module))
    config = build_config(header, tensors, quant)
    if rope_freqs is not None:
        config["rope_scaling"] = llama3_rope_scaling(rope_freqs, config["head_dim"],
                                                      config["rope_theta"])
    try:
        tokenizer = build_tokenizer(header.metadata)
    except GGUFImportError:
        raise
    except Exception as exc:  # tokenizers raises plain Exception for bad vocab/merges
        raise GGUFImportError(f"cannot build a tokenizer from tokenizer.ggml.*: {exc}") from exc
    index = save_weights(target, weights)
    if index is not None:
        write_json(target / "model.safetensors.index.json", index)
    del weights
    write_json(target / "config.json", config)
    tokenizer.save(str(target / "tokenizer.json"))
    for name, data in tokenizer_files(header.metadata, config["max_position_embeddings"]).items():
        write_json(target / name, data)
    _verify_loadable(target)
    stat = gguf_path.stat()
    write_json(target / IMPORT_MARKER, {
        "importer_version": IMPORTER_VERSION,
        "source": str(gguf_path.resolve()),
        "source_size": stat.st_size,
        "source_mtime": stat.st_mtime,
        "dequantize": dequantize,
        "tensor_types": dict(Counter(t.type_name for t in header.tensors)),
    })


def replace_dir(staged: Path, out: Path) -> None:
    """Move ``staged`` to ``out``; an existing ``out`` is swapped aside, then deleted."""
    if not out.exists():
        os.replace(staged, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / out.name)
    os.replace(staged, out)
    shutil.rmtree(trash, ignore_errors=True)
