"""The tokenizer: a byte-level BPE ``tokenizer.json`` rebuilt from ``tokenizer.ggml.*``, with the
pre-tokenizer llama.cpp uses for the file's ``tokenizer.ggml.pre``, and the tokenizer, special
token and generation configs beside it."""

from __future__ import annotations

import logging
from typing import Any

from mlx_router.importers.gguf.reader import GGUFHeader, GGUFImportError

logger = logging.getLogger(__name__)

__all__ = ["build_tokenizer", "check_tokenizer_kind", "tokenizer_files"]

# GGUF token types (llama.cpp llama_token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = (
    1, 2, 3, 4, 5, 6,
)

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


def check_tokenizer_kind(header: GGUFHeader) -> None:
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


def build_tokenizer(meta: dict[str, Any]) -> Any:
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
    bos = _token_id(meta, "bos_token_id", n) if meta.get("tokenizer.ggml.add_bos_token", False) else None
    eos = _token_id(meta, "eos_token_id", n) if meta.get("tokenizer.ggml.add_eos_token", False) else None
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False)
    prefix = [tokens[bos]] if bos is not None else []
    suffix = [tokens[eos]] if eos is not None else []
    single = [f"{t}:0" for t in prefix] + ["$A:0"] + [f"{t}:0" for t in suffix]
    pair = single + [f"{t}:1" for t in prefix] + ["$B:1"] + [f"{t}:1" for t in suffix]
    special = {tokens[i]: i for i in (bos, eos) if i is not None}
    return processors.TemplateProcessing(single=single, pair=pair,
                                         special_tokens=list(special.items()))


def tokenizer_files(meta: dict[str, Any], n_ctx: int) -> dict[str, dict[str, Any]]:
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
