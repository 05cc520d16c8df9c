"""The tiny-model fixture writes folders that mlx-lm loads and runs like real checkpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler

from mlx_router.fabricate import EOS_TOKEN, SPECIAL_TOKENS, make_tiny_llm

GREEDY = make_sampler(temp=0.0)


def greedy_tokens(model_dir: Path, prompt: str | list[int], n: int) -> tuple[list[int], str, Any]:
    """Decode ``n`` tokens greedily; return the token ids, the text and the last response."""
    model, tokenizer = load(str(model_dir))
    tokens, text, last = [], "", None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=n, sampler=GREEDY):
        tokens.append(last.token)
        text += last.text
    return tokens, text, last


def file_bytes(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(model_dir.iterdir())}


def test_session_model_loads(tiny_model_dir: Path) -> None:
    assert tiny_model_dir.name == "tiny-llama"
    model, tokenizer = load(str(tiny_model_dir))
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["vocab_size"] == 512 == len(tokenizer.get_vocab())
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.eos_token_ids == {tokenizer.convert_tokens_to_ids(EOS_TOKEN)}
    logits = model(mx.array([[1, 100, 200]]))
    assert logits.shape == (1, 3, 512)


@pytest.mark.parametrize("n", [1, 64, 300])
def test_greedy_decoding_produces_every_token(tiny_model_dir: Path, n: int) -> None:
    tokens, _, last = greedy_tokens(tiny_model_dir, "Hello", n)
    assert len(tokens) == n
    assert last.finish_reason == "length"
    assert last.generation_tokens == n


def test_zero_eos_zeroes_the_special_rows(tiny_model_dir: Path) -> None:
    model, tokenizer = load(str(tiny_model_dir))
    embedding = model.model.embed_tokens.weight
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert mx.all(embedding[mx.array(special_ids)] == 0).item()
    assert (mx.abs(embedding).sum(axis=1) > 0).sum().item() == 512 - len(special_ids)


def test_without_zero_eos_the_eos_row_is_random(make_tiny_model: Callable[..., Path]) -> None:
    model, tokenizer = load(str(make_tiny_model(zero_eos=False)))
    eos_row = model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids(EOS_TOKEN)]
    assert mx.abs(eos_row).sum().item() > 0


def test_the_output_is_varied(tiny_model_dir: Path) -> None:
    # A model that repeats one token would make detokenization and stop-string tests vacuous.
    tokens, text, _ = greedy_tokens(tiny_model_dir, "Hello", 128)
    assert len(set(tokens)) > 20
    assert len(text) > 128


def test_same_seed_same_model(make_tiny_model: Callable[..., Path]) -> None:
    first = make_tiny_model("a", seed=7)
    second = make_tiny_model("b", seed=7)
    other = make_tiny_model("c", seed=8)
    assert file_bytes(first) == file_bytes(second)
    assert file_bytes(first)["model.safetensors"] != file_bytes(other)["model.safetensors"]
    assert file_bytes(first)["tokenizer.json"] == file_bytes(other)["tokenizer.json"]
    assert greedy_tokens(first, "Hello", 32)[0] == greedy_tokens(second, "Hello", 32)[0]
    assert greedy_tokens(first, "Hello", 32)[0] != greedy_tokens(other, "Hello", 32)[0]


def test_chat_template_renders_chatml(tiny_model_dir: Path) -> None:
    _, tokenizer = load(str(tiny_model_dir))
    # Content parts (the OpenAI list form) render as their concatenated text.
    parts = [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": parts},
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    without = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert without.endswith("<|im_end|>\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids) == prompt


def test_tokenizer_round_trips_text(tiny_model_dir: Path) -> None:
    _, tokenizer = load(str(tiny_model_dir))
    text = "The capital of France is Paris. Ünïcödé 日本語 🙂\n\tcode()"
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("quantize", [False, True])
def test_architectures_and_quantization(
    make_tiny_model: Callable[..., Path], model_type: str, quantize: bool
) -> None:
    started = time.perf_counter()
    model_dir = make_tiny_model(f"tiny-{model_type}", model_type=model_type, quantize=quantize)
    assert time.perf_counter() - started < 2.0

    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == model_type
    assert ("quantization" in config) is quantize
    model, _ = load(str(model_dir))
    q_proj = model.model.layers[0].self_attn.q_proj
    assert hasattr(q_proj, "scales") is quantize
    tokens, _, last = greedy_tokens(model_dir, "Hello", 64)
    assert len(tokens) == 64 and last.finish_reason == "length"


def test_sizes_are_configurable(tmp_path: Path) -> None:
    model_dir = make_tiny_llm(
        tmp_path / "wider", hidden_size=128, num_layers=3, vocab_size=2000,
        max_position_embeddings=512,
    )
    model, tokenizer = load(str(model_dir))
    assert len(model.model.layers) == 3
    assert len(tokenizer.get_vocab()) == 2000
    assert model.model.embed_tokens.weight.shape == (2000, 128)
    assert len(greedy_tokens(model_dir, "Hi", 16)[0]) == 16


def test_rejects_impossible_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_tiny_llm(tmp_path / "x", hidden_size=40)
    with pytest.raises(ValueError):
        make_tiny_llm(tmp_path / "y", vocab_size=100)
