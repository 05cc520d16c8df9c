"""Random-weight mlx-lm language models: tiny ones for tests, realistic shapes for benchmarks.

Tiny models (:func:`make_tiny_llm`) are for the mechanics: batching, cancellation, streaming,
swapping, memory accounting. Every weight is drawn from a key derived from ``seed`` and the
parameter's name, without touching MLX's global random state: same arguments, same bytes on
disk. Their layers are scaled up so that greedy output wanders over the whole vocabulary.

Realistic models (:func:`make_random_llama`) have the shapes of released Llama checkpoints, so
throughput, memory and kernel shapes are those of the real thing; their weights are N(0, 0.02)
(drawn directly as packed values when quantized, so writing an 8B model needs about its
quantized size in memory). Their outputs are nonsense, which a throughput measurement does not
mind.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlx_router.fabricate.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, write_json, write_tokenizer

if TYPE_CHECKING:
    import mlx.core as mx
    from mlx.nn.layers.base import Module

__all__ = [
    "LLAMA_3_1_8B",
    "LLAMA_3_2_1B",
    "LlamaShape",
    "make_random_llama",
    "make_tiny_llm",
    "random_parameters",
]


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a Llama-style decoder."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool


LLAMA_3_2_1B = LlamaShape(2048, 16, 8192, 32, 8, 128256, tie_word_embeddings=True)
"""Llama-3.2-1B."""
LLAMA_3_1_8B = LlamaShape(4096, 32, 14336, 32, 8, 128256, tie_word_embeddings=False)
"""Llama-3.1-8B."""


def _architecture_name(model_type: str) -> str:
    """The transformers class name: llama -> LlamaForCausalLM, qwen2 -> Qwen2ForCausalLM."""
    return "".join(part.capitalize() for part in model_type.split("_")) + "ForCausalLM"


def _flat_parameters(model: Module) -> list[tuple[str, mx.array]]:
    """The model's parameters as (dotted name, array) pairs, in mlx's order."""
    from mlx.utils import tree_flatten

    # tree_flatten returns a list unless it is given a dict to fill.
    return cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters()))


def _model_config(
    model_type: str,
    shape: LlamaShape,
    *,
    max_position_embeddings: int,
    rope_theta: float,
    dtype: str,
    special_ids: Mapping[str, int],
) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "architectures": [_architecture_name(model_type)],
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_layers,
        "intermediate_size": shape.intermediate_size,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.hidden_size // shape.num_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": rope_theta,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": dtype,
        "bos_token_id": special_ids[BOS_TOKEN],
        "eos_token_id": special_ids[EOS_TOKEN],
        "pad_token_id": special_ids[PAD_TOKEN],
    }


def _save(path: Path, model: Module, config: dict[str, Any], special_ids: Mapping[str, int]) -> None:
    """model.safetensors (+ index), config.json and generation_config.json, as mlx-lm writes them."""
    from mlx_lm.utils import save_config, save_model

    save_model(path, model)
    save_config(config, path / "config.json")
    write_json(
        path / "generation_config.json",
        {
            "bos_token_id": special_ids[BOS_TOKEN],
            "eos_token_id": special_ids[EOS_TOKEN],
            "pad_token_id": special_ids[PAD_TOKEN],
        },
    )


def _quantize(model: Module, config: dict[str, Any], group_size: int, bits: int) -> tuple[Module, dict[str, Any]]:
    """mlx-lm's quantization (it prints a bits-per-weight line nobody here needs)."""
    from mlx_lm.utils import quantize_model

    with contextlib.redirect_stdout(io.StringIO()):
        quantized, config = quantize_model(model, config, group_size=group_size, bits=bits)
    return quantized, config


# ---------------------------------------------------------------------------------------------- tiny models

# With MLX's default init the residual stream stays close to the input token's embedding and,
# the embedding being tied, greedy decoding repeats one token forever. Larger layer weights make
# the layers matter: the output wanders over the whole vocabulary (multi-byte fragments included),
# which is what tests of detokenization and stop strings need.
_LAYER_GAIN = 4.0


def random_parameters(model: Module, seed: int, hidden_size: int) -> dict[str, mx.array]:
    """Draw every parameter from a key made of ``seed`` and its name.

    Norm weights keep their constructed values (ones, or zeros for ``1 + w`` norms).
    Embeddings follow MLX's ``Embedding`` init; matrices and biases MLX's ``Linear`` init times
    ``_LAYER_GAIN``. Keys derived from names mean layer 0 stays the same when layers are added.
    """
    import mlx.core as mx

    params = {}
    for name, value in _flat_parameters(model):
        module_name = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if "norm" in module_name:
            params[name] = value
            continue
        key = mx.random.key(((seed & 0xFFFFFFFF) << 32) | zlib.crc32(name.encode()))
        if "embed" in name and value.ndim == 2:
            params[name] = mx.random.normal(value.shape, key=key) * math.sqrt(1 / value.shape[-1])
        else:
            fan_in = value.shape[-1] if value.ndim >= 2 else hidden_size
            scale = _LAYER_GAIN * math.sqrt(1 / fan_in)
            params[name] = mx.random.uniform(-scale, scale, value.shape, key=key)
    return params


def make_tiny_llm(
    path: Path,
    *,
    model_type: str = "llama",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    zero_eos: bool = True,
    quantize: bool = False,
    config_overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write a random-weight mlx-lm model with a ChatML BPE tokenizer into ``path``.

    ``model_type`` is an mlx-lm model type (``llama`` and ``qwen2`` are tested; others whose
    ``ModelArgs`` take the usual Llama-style fields work too: mistral, qwen3, phi3, gemma,
    gemma2, olmo2, starcoder2 were checked). ``hidden_size`` must be a multiple of 16 (heads of
    width 16, half as many KV heads: GQA is exercised).
    With ``zero_eos=True`` (the default) the output rows of the special tokens are zero, so their
    logit is exactly 0 while every other logit is random: greedy decoding never picks EOS and a
    request for N tokens produces N tokens (sampling can still pick one, about 1/vocab per step).
    ``quantize=True`` writes 4-bit affine weights with group size 32, the layout of mlx-lm's
    converted checkpoints (``config["quantization"]``). ``config_overrides`` is merged into
    config.json last, for architecture-specific fields.

    Returns ``path``. Files written: config.json, model.safetensors (+ index), tokenizer.json,
    tokenizer_config.json, special_tokens_map.json, generation_config.json.
    """
    if hidden_size % 16 or hidden_size < 16:
        raise ValueError("hidden_size must be a positive multiple of 16")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (byte-level)")
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import MODEL_REMAPPING

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special_ids = write_tokenizer(path, vocab_size, max_position_embeddings)
    num_heads = max(1, hidden_size // 16)
    shape = LlamaShape(hidden_size, num_layers, 2 * hidden_size, num_heads, max(1, num_heads // 2), vocab_size,
                       tie_word_embeddings=True)
    config = _model_config(model_type, shape, max_position_embeddings=max_position_embeddings, rope_theta=10000.0,
                           dtype="float32", special_ids=special_ids)
    config.update(config_overrides or {})

    # Resolve the module as mlx_lm.load will (e.g. "mistral" is built by mlx_lm.models.llama).
    arch = importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}")
    model = arch.Model(arch.ModelArgs.from_dict(config))
    params = random_parameters(model, seed, hidden_size)
    if zero_eos:
        out_name = "lm_head.weight" if "lm_head.weight" in params else None
        if out_name is None:
            out_name = next((n for n in params if n.endswith("embed_tokens.weight")), None)
        if out_name is None:
            raise ValueError(f"zero_eos: no lm_head or embed_tokens in {model_type!r}")
        weight = params[out_name]
        weight[mx.array(sorted(special_ids.values()))] = 0.0
        params[out_name] = weight
    model.update(tree_unflatten(list(params.items())))
    mx.eval(model.parameters())
    if quantize:
        model, config = _quantize(model, config, group_size=32, bits=4)
    _save(path, model, config, special_ids)
    return path


# ---------------------------------------------------------------------------------------------- realistic shapes


def make_random_llama(
    path: Path,
    shape: LlamaShape,
    *,
    bits: int | None = None,
    dtype: str = "bfloat16",
    max_position_embeddings: int = 8192,
    tokenizer_vocab: int = 1024,
) -> Path:
    """Write a random-weight Llama of ``shape`` into ``path`` (``bits``: 4 or 8 for affine
    quantization with group size 64, as mlx-lm's converted checkpoints).

    The tokenizer is the small trained BPE (``tokenizer_vocab`` ids) however large the model's
    vocabulary: mlx-lm's streaming detokenizer accepts ids beyond it, which is all a throughput
    measurement needs. The output rows of the special tokens are zero (greedy decoding never
    stops early). Returns ``path``.
    """
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.models import llama

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(path, tokenizer_vocab, max_position_embeddings)
    config = _model_config("llama", shape, max_position_embeddings=max_position_embeddings, rope_theta=500000.0,
                           dtype=dtype, special_ids=ids)
    model: Module = llama.Model(llama.ModelArgs.from_dict(config))  # lazy: nothing is computed before update()
    if bits:
        model, config = _quantize(model, config, group_size=64, bits=bits)
    mx_dtype = getattr(mx, dtype)
    out = "model.embed_tokens." if shape.tie_word_embeddings else "lm_head."
    rows = mx.array(sorted(ids.values()))
    # Dequantized values q * scale + bias with q uniform over 0 .. 2**bits - 1: mean 0, std ~0.02.
    scale = 0.0045 * 16 / 2 ** (bits or 4)
    bias = -(2 ** (bits or 4) - 1) / 2 * scale
    params = []
    for i, (name, value) in enumerate(_flat_parameters(model)):
        key = mx.random.key(i)
        if value.dtype == mx.uint32:  # packed quantized values, uniform over every code
            hi, lo = (mx.random.randint(0, 1 << 16, value.shape, dtype=mx.uint32, key=k) for k in mx.random.split(key))
            w = (hi << 16) | lo
        elif name.endswith((".scales", ".biases")):
            w = mx.full(value.shape, scale if name.endswith(".scales") else bias, dtype=mx_dtype)
        elif "norm" in name:
            w = mx.ones(value.shape, dtype=mx_dtype)
        else:
            w = mx.random.normal(value.shape, dtype=mx_dtype, key=key) * 0.02
        if name.startswith(out) and w.dtype != mx.uint32:
            w[rows] = 0  # logit exactly 0 for EOS and the other specials (scales and biases when quantized)
        mx.eval(w)
        params.append((name, w))
    model.update(tree_unflatten(params))
    _save(path, model, config, ids)
    return path
