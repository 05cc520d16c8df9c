"""config.json for mlx-lm from ``llama.*`` metadata and the tensor shapes, rope scaling included.

Only ``general.architecture == "llama"`` is supported. GGUF stores Q/K rows permuted for
llama.cpp's interleaved ("normal") RoPE, so the folder sets ``rope_traditional: true`` instead
of un-permuting the (possibly quantised) rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlx_router.importers.gguf.reader import GGUFHeader, GGUFImportError, GGUFTensorInfo

__all__ = ["build_config", "check_architecture", "llama3_rope_scaling"]


def check_architecture(header: GGUFHeader) -> None:
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


def _require(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise GGUFImportError(f"missing GGUF metadata key {key}")
    return meta[key]


def _tidy_float(value: float) -> float:
    """float32 metadata (1e-5 stored as 9.99999974e-06) → the short decimal people wrote."""
    return float(f"{float(value):.7g}")


def build_config(
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

    A ``rope_freqs.weight`` tensor (Llama 3.1+) is resolved in :func:`llama3_rope_scaling`
    once its values are loaded; here it only reserves the slot.
    """
    kind = meta.get("llama.rope.scaling.type", "none")
    factor = float(meta.get("llama.rope.scaling.factor", 1.0) or 1.0)
    if kind in ("none", None) or (kind == "linear" and factor == 1.0):
        return {"rope_type": "llama3"} if "rope_freqs.weight" in tensors else None
    if kind == "linear":
        return {"type": "linear", "factor": _tidy_float(factor)}
    raise GGUFImportError(f"unsupported GGUF rope scaling llama.rope.scaling.type={kind!r}")


def llama3_rope_scaling(
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
