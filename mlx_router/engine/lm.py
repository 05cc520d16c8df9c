"""The mlx-lm adapter: loading a text model and stepping its sequences.

Runs only inside a worker process. Each :class:`Sequence` wraps mlx-lm's ``generate_step``
with its own sampler (and random key, so seeds stay reproducible while other sequences run),
its own streaming detokenizer and stop-string matching.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import mlx.core as mx
from mlx_lm import load as mlx_lm_load
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from mlx_router.engine.types import EngineError, GenerationChunk, GenerationParams, GenerationRequest, LoadInfo
from mlx_router.errors import redact_paths
from mlx_router.text.templates import named_template

__all__ = ["LMEngine", "RequestRejected", "Sequence", "classify_exception", "make_sampler"]

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 4096


class RequestRejected(Exception):
    """A request the model cannot serve (bad template input, prompt longer than the context)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def make_sampler(params: GenerationParams) -> Callable[[mx.array], mx.array]:
    """A sampler with a private random key: a seed reproduces its sequence whatever runs beside it."""
    if params.temperature == 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
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


def _logits_processors(params: GenerationParams) -> list[Callable[[mx.array, mx.array], mx.array]]:
    return make_logits_processors(
        logit_bias=params.logit_bias or None,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty or None,
        frequency_penalty=params.frequency_penalty or None,
    )


class Sequence:
    """One request being generated: tokens in, text chunks out."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        engine: LMEngine,
        max_tokens: int,
    ) -> None:
        self.request_id = request.request_id
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.max_tokens = max_tokens
        self._eos = engine.eos_token_ids
        self._stops = tuple(s for s in request.params.stop if s)
        self._holdback = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self._detok = engine.tokenizer.detokenizer
        self._steps: Iterator[tuple[Any, Any]] = generate_step(
            mx.array(prompt_ids),
            engine.model,
            max_tokens=max_tokens,
            sampler=make_sampler(request.params),
            logits_processors=_logits_processors(request.params),
        )
        self.finished = False
        self.reasoning_open = False

    def step(self) -> GenerationChunk:
        """Advance one token; the chunk carries the text that may be shown now."""
        finish: str | None = None
        try:
            token, _ = next(self._steps)
        except StopIteration:
            finish = "length"
        else:
            token = int(token)
            if token in self._eos:
                finish = "stop"
            else:
                self.completion_tokens += 1
                self._detok.add_token(token)
                self._pending += self._detok.last_segment
                if self.completion_tokens >= self.max_tokens:
                    finish = "length"
        if finish is not None:
            self._detok.finalize()
            self._pending += self._detok.last_segment
        text, matched = self._take_text(final=finish is not None)
        if matched:
            finish = "stop"
        if finish is not None:
            self.finished = True
        return GenerationChunk(
            request_id=self.request_id,
            text=text,
            completion_tokens=self.completion_tokens,
            prompt_tokens=self.prompt_tokens,
            finish_reason=finish,  # type: ignore[arg-type]
        )

    def _take_text(self, *, final: bool) -> tuple[str, bool]:
        """Text safe to emit, holding back what could still become a stop string."""
        pending = self._pending
        if self._stops:
            hits = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
            if hits:
                self._pending = ""
                return pending[: min(hits)], True
        cut = len(pending) if final or not self._stops else max(0, len(pending) - self._holdback)
        self._pending = pending[cut:]
        return pending[:cut], False


@dataclass
class LMEngine:
    """A loaded mlx-lm model with its tokenizer and limits."""

    model: Any
    tokenizer: Any
    context_length: int
    eos_token_ids: frozenset[int]
    chat_template: str | None
    load_info: LoadInfo

    @classmethod
    def load(cls, model_path: str, *, context_length: int | None, chat_template: str | None) -> LMEngine:
        """Load weights and tokenizer; measure what it costs."""
        started = time.perf_counter()
        model, tokenizer, config = mlx_lm_load(model_path, return_config=True)
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
        return cls(model, tokenizer, limit, eos, template, info)

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer, per the model's own arguments (mlx-lm models keep ``args``)."""
        args = getattr(self.model, "args", None)
        return int(getattr(args, "vocab_size", 0) or 2**31)

    def encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids: chat messages through the chat template, or a raw prompt."""
        if request.messages is None:
            return list(self.tokenizer.encode(request.prompt or ""))
        kwargs = dict(request.chat_template_kwargs)
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        elif not getattr(self.tokenizer, "chat_template", None):
            kwargs["chat_template"] = named_template("generic")
        try:
            ids = self.tokenizer.apply_chat_template(
                list(request.messages), add_generation_prompt=True, tokenize=True, **kwargs
            )
        except Exception as exc:  # jinja raises template errors of many types
            raise RequestRejected(
                "invalid_request", redact_paths(f"the chat template rejected the messages: {exc}")
            ) from None
        if isinstance(ids, dict):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def start(self, request: GenerationRequest) -> Sequence:
        """Tokenize and admit a request, bounding max_tokens by the context left."""
        vocab = self.vocab_size
        bad = [t for t in request.params.logit_bias if t >= vocab]
        if bad:
            raise RequestRejected("invalid_request", f"logit_bias token id {bad[0]} is outside the vocabulary (size {vocab})")
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
        seq = Sequence(request, prompt_ids, self, min(request.params.max_tokens, room))
        tail = self.tokenizer.decode(prompt_ids[-16:]).rstrip()
        seq.reasoning_open = tail.endswith("<think>")
        return seq

    def warmup(self, tokens: int) -> None:
        """Run a short greedy generation so the first request does not pay for kernel setup."""
        if tokens <= 0:
            return
        request = GenerationRequest("warmup", GenerationParams(max_tokens=tokens), prompt="Hello")
        seq = self.start(request)
        while not seq.finished:
            seq.step()


def classify_exception(exc: BaseException, request_id: str | None) -> EngineError:
    """Name out-of-memory failures as such; everything else is internal."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(
        marker in text for marker in ("out of memory", "outofmemory", "resource limit", "failed to allocate")
    ):
        return EngineError("out_of_memory", "the model ran out of memory while generating", request_id)
    return EngineError("internal", f"generation failed: {exc.__class__.__name__}", request_id)


def _config_context_length(config: dict[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length"):
        value = config.get(key) or (config.get("text_config") or {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _weight_bytes(model_path: str) -> int:
    return sum(p.stat().st_size for p in Path(model_path).glob("*.safetensors"))
