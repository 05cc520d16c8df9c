"""The mlx-lm adapter: loading a text model, admitting requests, per-sequence sampling.

Runs only inside a worker process. Batching lives in :mod:`mlx_router.engine.batch`; this
module knows the model: its tokenizer and chat template, its context window, and how to build
a sequence's sampler (with a private random key, so a seed reproduces its sequence whatever
runs beside it) and logits processors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
from mlx_lm import load as mlx_lm_load
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from mlx_router.engine.constrain import ConstraintProcessor, Grammars
from mlx_router.engine.types import (
    EngineError,
    EngineErrorKind,
    GenerationParams,
    GenerationRequest,
    LoadInfo,
    TokenLogprob,
)
from mlx_router.errors import redact_paths
from mlx_router.text.constraints import forced_format
from mlx_router.text.reasoning import ReasoningFormat, detect_reasoning_format
from mlx_router.text.templates import named_template
from mlx_router.text.tools import FALLBACK_FORMAT, detect_tool_format, template_renders_tools
from mlx_router.text.tools.prompt import describe_tools, flatten_tool_history

__all__ = ["LMEngine", "RequestRejected", "classify_exception", "greedy", "logits_processors", "make_sampler"]

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 4096


class RequestRejected(Exception):
    """A request the model cannot serve (bad template input, prompt longer than the context)."""

    def __init__(self, kind: EngineErrorKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param


def greedy(logprobs: mx.array) -> mx.array:
    """Argmax. One shared function: a batch whose sequences all use it samples in one call."""
    return mx.argmax(logprobs, axis=-1)


def make_sampler(params: GenerationParams) -> Callable[[mx.array], mx.array]:
    """A sampler with a private random key: a seed reproduces its sequence whatever runs beside it."""
    if params.temperature == 0:
        return greedy
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0 < params.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0:
        filters.append(lambda x: apply_min_p(x, params.min_p, 1))
    if params.top_k > 0:
        filters.append(lambda x: apply_top_k(x, params.top_k))
    seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
    key = mx.random.key(seed % (1 << 63))
    inv_temp = 1.0 / params.temperature

    def sampler(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, sub = mx.random.split(key)
        for apply in filters:
            logprobs = apply(logprobs)
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return sampler


def logits_processors(params: GenerationParams) -> list[Callable[[mx.array, mx.array], mx.array]]:
    return make_logits_processors(
        logit_bias=params.logit_bias or None,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty or None,
        frequency_penalty=params.frequency_penalty or None,
    )


@dataclass
class LMEngine:
    """A loaded mlx-lm model with its tokenizer and limits."""

    model: Any
    tokenizer: Any
    context_length: int
    eos_token_ids: frozenset[int]
    chat_template: str | None
    load_info: LoadInfo
    _pieces: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    _byte_decoder: dict[str, int] | None = None
    reasoning_format: ReasoningFormat = "think"
    tool_format: str = FALLBACK_FORMAT
    """The call syntax the chat template teaches (used when a request names none)."""
    renders_tools: bool = False
    """The chat template renders ``tools``; otherwise the server describes them itself."""
    grammar_cache_size: int = 64
    _grammars: Grammars | None = None
    model_path: str = ""
    """Where the checkpoint was read from (names the disk tier of the prefix cache)."""

    @classmethod
    def load(
        cls,
        model_path: str,
        *,
        context_length: int | None,
        chat_template: str | None,
        loader: Callable[[str], tuple[Any, Any, dict[str, Any]]] | None = None,
    ) -> LMEngine:
        """Load weights and tokenizer; measure what it costs. ``loader`` replaces mlx-lm's
        ``load`` (a rank of a group loads its shard with ``sharded_load``)."""
        started = time.perf_counter()
        if loader is None:
            # mlx-lm annotates load as returning two values; with return_config it returns three
            model, tokenizer, config = cast(tuple[Any, Any, dict[str, Any]], mlx_lm_load(model_path, return_config=True))
        else:
            model, tokenizer, config = loader(model_path)
        mx.eval(model.parameters())
        active = int(mx.get_active_memory())
        limit = context_length or _config_context_length(config) or DEFAULT_CONTEXT_LENGTH
        eos = frozenset(int(t) for t in (tokenizer.eos_token_ids or ()))
        template = named_template(chat_template) if chat_template not in (None, "auto") else None
        has_template = template is not None or bool(getattr(tokenizer, "chat_template", None))
        info = LoadInfo(
            load_seconds=time.perf_counter() - started,
            weight_bytes=active or _weight_bytes(model_path),
            context_length=limit,
            eos_token_ids=tuple(sorted(eos)),
            has_chat_template=has_template,
            backend="gpu" if mx.default_device() == mx.gpu else "cpu",
        )
        source = template if template is not None else getattr(tokenizer, "chat_template", None)
        return cls(
            model,
            tokenizer,
            limit,
            eos,
            template,
            info,
            {},
            _byte_decoder_for(tokenizer),
            detect_reasoning_format(source),
            detect_tool_format(source),
            template_renders_tools(source),
            model_path=model_path,
        )

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer, per the model's own arguments (mlx-lm models keep ``args``)."""
        args = getattr(self.model, "args", None)
        return int(getattr(args, "vocab_size", 0) or 2**31)

    def encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids: chat messages through the chat template, or a raw prompt."""
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        if request.messages is None:
            return list(self.tokenizer.encode(request.prompt or ""))
        messages, kwargs = self.template_input(request)
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        elif not getattr(self.tokenizer, "chat_template", None):
            kwargs["chat_template"] = named_template("generic")
        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 (jinja raises template errors of many types)
            raise RequestRejected(
                "invalid_request", redact_paths(f"the chat template rejected the messages: {exc}")
            ) from None
        if isinstance(ids, dict):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt tokens :meth:`encode` gives, nothing admitted (what ``count_tokens`` answers)."""
        return len(self.encode(request))

    def template_input(self, request: GenerationRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and variables for the chat template: the request's tools go to a
        template that renders them, else the server describes them (and earlier calls) itself."""
        kwargs = dict(request.chat_template_kwargs)
        messages = list(request.messages or ())
        if self.renders_tools:
            if request.tools:
                kwargs["tools"] = list(request.tools)
        else:  # the server writes tools and tool turns in the Hermes style itself
            messages = flatten_tool_history(messages)
            if request.tools:
                messages = describe_tools(messages, list(request.tools))
        return messages, kwargs

    def admit(self, request: GenerationRequest) -> tuple[list[int], int]:
        """Prompt token ids and max_tokens bounded by the context left; refuses what cannot run."""
        vocab = self.vocab_size
        bad = [t for t in request.params.logit_bias if t >= vocab]
        if bad:
            raise RequestRejected(
                "invalid_request", f"logit_bias token id {bad[0]} is outside the vocabulary (size {vocab})", "logit_bias"
            )
        if request.prompt_ids is not None and any(not 0 <= t < vocab for t in request.prompt_ids):
            raise RequestRejected("invalid_request", f"prompt token ids must be between 0 and {vocab - 1}", "prompt")
        prompt_ids = self.encode(request)
        if not prompt_ids:
            raise RequestRejected("invalid_request", "the prompt is empty")
        room = self.context_length - len(prompt_ids)
        if room <= 0:
            raise RequestRejected(
                "context_length",
                f"the prompt has {len(prompt_ids)} tokens, which does not fit this model's "
                f"context of {self.context_length} tokens",
            )
        return prompt_ids, min(request.params.max_tokens, room)

    def output_tool_format(self, request: GenerationRequest) -> str | None:
        """The call syntax of this sequence's output: None without tools; the forced-call syntax
        under a tool constraint; else the request's choice, the template's, or Hermes."""
        if not request.tools:
            return None
        own = self._own_tool_format(request)
        constraint = request.params.constraint
        return forced_format(own) if constraint is not None and constraint.kind == "tools" else own

    def _own_tool_format(self, request: GenerationRequest) -> str:
        return request.tool_format or (self.tool_format if self.renders_tools else FALLBACK_FORMAT)

    @property
    def grammars(self) -> Grammars:
        """Grammar compiler for this tokenizer (built on first use: it costs ~0.3 s)."""
        if self._grammars is None:
            eos = sorted(self.eos_token_ids)
            self._grammars = Grammars(self.tokenizer._tokenizer, self.vocab_size_for_grammar, eos, self.grammar_cache_size)
        return self._grammars

    @property
    def vocab_size_for_grammar(self) -> int:
        args = getattr(self.model, "args", None)
        return int(getattr(args, "vocab_size", 0) or len(self.tokenizer._tokenizer))

    def constraint_processor(self, request: GenerationRequest) -> ConstraintProcessor | None:
        """The logits processor enforcing the request's constraint, if it has one."""
        constraint = request.params.constraint
        if constraint is None:
            return None
        grammar, _ = self.grammars.grammar(constraint, self._own_tool_format(request))
        try:
            matcher = self.grammars.matcher(grammar)
        except ValueError as exc:
            raise RequestRejected("invalid_request", f"the output constraint cannot be used: {exc}", "response_format") from None
        return ConstraintProcessor(matcher, self.vocab_size_for_grammar, sorted(self.eos_token_ids))

    def reasoning_open(self, prompt_ids: list[int]) -> bool:
        """Whether the prompt ends inside a think block the template opened."""
        return str(self.tokenizer.decode(prompt_ids[-16:])).rstrip().endswith("<think>")

    def token_logprob(self, token: int, vector: mx.array, top: int) -> TokenLogprob:
        """The log-probability of ``token`` and the ``top`` most likely tokens at this step."""
        alternatives: tuple[tuple[str, bytes, float], ...] = ()
        if top > 0:
            ids = mx.argpartition(-vector, kth=top - 1)[:top]
            values = cast(list[float], vector[ids].tolist())
            ranked = sorted(zip(cast(list[int], ids.tolist()), values), key=lambda pair: -pair[1])
            alternatives = tuple((*self.token_piece(i), float(v)) for i, v in ranked)
        text, raw = self.token_piece(token)
        return TokenLogprob(text, raw, float(cast(float, vector[token].item())), alternatives)

    def token_piece(self, token: int) -> tuple[str, bytes]:
        """A token's own text and bytes (a byte-level piece may be part of a character)."""
        cached = self._pieces.get(token)
        if cached is None:
            raw = _token_bytes(self.tokenizer, token, self._byte_decoder)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # part of a character: spelled as OpenAI does
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            cached = (text, raw)
            self._pieces[token] = cached
        return cached


SHORT_PREFILL_TOKENS = 256
"""Prompt chunks up to this long, after cached tokens, attend through plain matrix products."""
SHORT_PREFILL_SCORES = 1 << 27
"""...as long as their attention scores (batch x heads x chunk x keys) stay below this many."""


def attend_short_chunks_directly(model: Any) -> set[int] | None:
    """Route a model's attention for short prompt chunks that follow cached tokens (a prefix-cache
    hit, the next turn of a conversation) through matrix products instead of the fused kernel;
    so too a prompt's first chunk, alone in its batch, whose length is in the returned set (the
    prefill widths whose fused kernels are not prepared yet: :class:`BatchScheduler` fills it and
    takes each width out as its idle warm-up prepares it).

    On the CUDA backend the fused attention of a prompt chunk builds a cuDNN graph for every new
    (chunk, keys) shape, 70 ms to a second each, and after a cached prefix nearly every request
    has a new one; the same attention as two matrix products and a softmax costs a few
    milliseconds for a short chunk. Returns None when the model's module cannot be patched (its
    attention is not mlx-lm's shared function)."""
    from mlx_lm.models import base

    module = sys.modules.get(type(model).__module__)
    fused = getattr(module, "scaled_dot_product_attention", None)
    if module is None:
        return None
    cold = getattr(fused, "cold_widths", None)
    if cold is not None:
        return cast(set[int], cold)
    if fused is not base.scaled_dot_product_attention:
        return None
    cold_widths: set[int] = set()

    def attention(queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float, mask: Any,
                  sinks: Any = None) -> mx.array:
        b, heads, length, dim = queries.shape
        width = keys.shape[2]
        after_cache = 1 < length <= SHORT_PREFILL_TOKENS and width > length
        first_cold = b == 1 and width == length and length in cold_widths
        if (
            not (after_cache or first_cold)
            or b * heads * length * width > SHORT_PREFILL_SCORES
            or sinks is not None
            or hasattr(cache, "bits")
        ):
            return fused(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        groups = heads // keys.shape[1]
        q = (queries * scale).reshape(b, keys.shape[1], groups, length, dim)
        scores = q @ keys[:, :, None].swapaxes(-1, -2)
        if isinstance(mask, str):  # "causal": each query sees the cached keys and itself
            mask = mx.arange(width - length, width)[:, None] >= mx.arange(width)[None]
        if mask is not None:
            if mask.ndim == 4:
                mask = mx.expand_dims(mask, 2)
            scores = mx.where(mask, scores, -float("inf")) if mask.dtype == mx.bool_ else scores + mask
        probs = mx.softmax(scores, axis=-1, precise=True)
        return (probs @ values[:, :, None]).reshape(b, heads, length, values.shape[-1])

    attention.cold_widths = cold_widths  # type: ignore[attr-defined]  # read back by getattr on a second call
    setattr(module, "scaled_dot_product_attention", attention)  # noqa: B010 (mlx-lm's module has no stub for it)
    return cold_widths


def classify_exception(exc: BaseException, request_id: str | None) -> EngineError:
    """Name out-of-memory failures as such; everything else is internal."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(
        marker in text for marker in ("out of memory", "outofmemory", "resource limit", "failed to allocate")
    ):
        return EngineError("out_of_memory", "the model ran out of memory while generating", request_id)
    # The exception class stays in the worker log: clients get no internals.
    return EngineError("internal", "generation failed (the server log has the details)", request_id)


def _config_context_length(config: dict[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length"):
        value = config.get(key) or (config.get("text_config") or {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _weight_bytes(model_path: str) -> int:
    return sum(p.stat().st_size for p in Path(model_path).glob("*.safetensors"))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}


def _byte_decoder_for(tokenizer: Any) -> dict[str, int] | None:
    """The byte decoder when the vocabulary is byte-level BPE (it spells spaces as 'Ġ')."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 (tokenizers without a vocabulary view fall back to decode())
        return None
    if not any(piece.startswith("Ġ") for piece in list(vocab)[:50000]):
        return None
    return {char: byte for byte, char in _bytes_to_unicode().items()}


def _token_bytes(tokenizer: Any, token: int, byte_decoder: dict[str, int] | None) -> bytes:
    piece = tokenizer.convert_ids_to_tokens(token)
    if isinstance(piece, str):
        if byte_decoder is not None and all(ch in byte_decoder for ch in piece):
            return bytes(byte_decoder[ch] for ch in piece)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # SentencePiece byte fallback
            return bytes([int(piece[3:5], 16)])
        if byte_decoder is None:
            return piece.replace("\u2581", " ").encode("utf-8")
    return str(tokenizer.decode([token])).encode("utf-8")
