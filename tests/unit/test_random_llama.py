"""make_random_llama writes the benchmark's realistic-shape models: scaled down here to a few
hundred thousand parameters, the same code paths (bfloat16, 4 and 8 bits, tied and untied)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler

from mlx_router.fabricate import LLAMA_3_1_8B, SPECIAL_TOKENS, LlamaShape, make_random_llama

# Llama-3.1-8B's proportions (4 query heads per KV head, untied output) at a width MLX's 64-wide
# quantization groups accept, with a vocabulary twice the size of the tokenizer's.
SMALL = replace(LLAMA_3_1_8B, hidden_size=128, num_layers=2, intermediate_size=448, num_heads=8, num_kv_heads=2,
                vocab_size=2048)


def _greedy(folder: Path, n: int) -> tuple[list[int], str | None]:
    model, tokenizer = load(str(folder))
    tokens, finish = [], None
    for response in stream_generate(model, tokenizer, "Hello there", max_tokens=n, sampler=make_sampler(temp=0.0)):
        tokens.append(response.token)
        finish = response.finish_reason
    return tokens, finish


@pytest.mark.parametrize(("bits", "tied"), [(None, True), (None, False), (4, False), (8, True)])
def test_loads_and_never_stops_early(tmp_path: Path, bits: int | None, tied: bool) -> None:
    shape = replace(SMALL, tie_word_embeddings=tied)
    folder = make_random_llama(tmp_path / "m", shape, bits=bits)
    config = json.loads((folder / "config.json").read_text())
    assert (config["hidden_size"], config["num_key_value_heads"], config["vocab_size"]) == (128, 2, 2048)
    assert config["tie_word_embeddings"] is tied
    assert config.get("quantization", {}).get("bits") == bits

    model, tokenizer = load(str(folder))
    assert len(tokenizer.get_vocab()) == 1024  # the small BPE; the model's ids go beyond it
    logits = model(mx.array([[5, 6, 7]]))[0, -1]
    assert logits.shape == (2048,)
    specials = mx.array([tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS])
    assert mx.all(logits[specials] == 0).item()
    assert mx.max(logits).item() > 0  # so greedy decoding always prefers an ordinary token

    tokens, finish = _greedy(folder, 24)
    assert len(tokens) == 24 and finish == "length"


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_weights_have_the_scale_of_a_trained_model(tmp_path: Path, bits: int | None) -> None:
    model, _ = load(str(make_random_llama(tmp_path / "m", SMALL, bits=bits)))
    proj = model.model.layers[0].mlp.down_proj
    weight = proj.weight if bits is None else mx.dequantize(proj.weight, proj.scales, proj.biases, group_size=64,
                                                             bits=bits)
    weight = weight.astype(mx.float32)
    assert weight.shape == (128, 448)
    assert 0.018 < mx.std(weight).item() < 0.023
    assert abs(mx.mean(weight).item()) < 0.002


def test_same_arguments_same_files(tmp_path: Path) -> None:
    first = make_random_llama(tmp_path / "a", SMALL, bits=4)
    second = make_random_llama(tmp_path / "b", SMALL, bits=4)
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in files)


def test_the_named_shapes_are_those_of_the_released_models() -> None:
    from mlx_router.fabricate import LLAMA_3_2_1B

    assert LLAMA_3_2_1B == LlamaShape(2048, 16, 8192, 32, 8, 128256, tie_word_embeddings=True)
    assert LLAMA_3_1_8B == LlamaShape(4096, 32, 14336, 32, 8, 128256, tie_word_embeddings=False)
