"""Weights: every tensor loaded with ``mx.load``, renamed to mlx-lm's llama names, written as
safetensors.

Q4_0 / Q4_1 / Q8_0 arrive from ``mx.load`` as MLX affine ``weight``/``scales``/``biases`` with
group size 32, bit-exact with llama.cpp's dequantisation, and are kept quantised (or
dequantised to float32 on request). BF16 is read straight from the file.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mlx_router.importers.gguf.reader import GGUFHeader, GGUFImportError, GGUFTensorInfo

__all__ = [
    "GROUP_SIZE",
    "MAX_SHARD_BYTES",
    "QUANT_BITS",
    "SUPPORTED_TENSOR_TYPES",
    "check_tensor_types",
    "float_linear_modules",
    "load_weights",
    "quantization_config",
    "save_weights",
]

#: Shard size for large models, the same order of magnitude mlx-lm uses.
MAX_SHARD_BYTES = 5 << 30

GROUP_SIZE = 32  # block size of Q4_0 / Q4_1 / Q8_0 == MLX group size after mx.load

#: Q4_K decoding disagreed with gguf-py's reference dequantisation.
SUPPORTED_TENSOR_TYPES: tuple[str, ...] = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")
QUANT_BITS: dict[str, int] = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}

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


def check_tensor_types(header: GGUFHeader) -> None:
    for info in header.tensors:
        if info.type_name not in SUPPORTED_TENSOR_TYPES:
            raise GGUFImportError(
                f"unsupported GGUF tensor type {info.type_name} for {info.name}; "
                f"supported: {', '.join(SUPPORTED_TENSOR_TYPES)}"
            )


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


def load_weights(
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
    if not isinstance(raw, dict):  # GGUF loads as named tensors; the other shapes are for .npy files
        raise GGUFImportError(f"mlx did not read {path} as named tensors")
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


def quantization_config(
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


def float_linear_modules(weights: dict[str, Any], bits_by_module: dict[str, int]) -> list[str]:
    """Linear/embedding modules stored in float next to quantised ones (norms excluded)."""
    modules = []
    for key in weights:
        module, _, suffix = key.rpartition(".")
        if suffix == "weight" and module not in bits_by_module and (
            module.endswith("_proj") or module in ("model.embed_tokens", "lm_head")
        ):
            modules.append(module)
    return sorted(modules)


def save_weights(out: Path, weights: dict[str, Any]) -> dict[str, Any] | None:
    """Write ``model.safetensors``, or shards when over MAX_SHARD_BYTES; return the contents of
    ``model.safetensors.index.json`` for shards (None for a single file)."""
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
        return None
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(out / name), shard, metadata={"format": "mlx"})
        weight_map.update({key: name for key in shard})
    total = sum(w.nbytes for w in weights.values())
    return {"metadata": {"total_size": total}, "weight_map": weight_map}
