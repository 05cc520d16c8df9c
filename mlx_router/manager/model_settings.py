"""One model's settings, resolved once: ``models.<id>`` over ``defaults`` over the built-in values.

Everything that asks "what does this model use for X" reads a :class:`ResolvedModelSettings`
instead of choosing between ``entry.config.x`` and ``settings.defaults.x`` itself; the choice is
made here, in one place, for every key (a ``config.x or defaults.x`` chain also gets 0 and
empty values wrong). A configuration reload builds new entries and so new views; a request keeps
the view of the entry it resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from mlx_router.config.settings import Defaults
from mlx_router.manager.registry import ModelEntry, prefix_cache_bytes

__all__ = ["SAMPLING_DEFAULTS", "ResolvedModelSettings", "SamplingDefaults", "resolve_model_settings"]

GB = 1024**3
T = TypeVar("T")


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that names no sampling parameter gets when neither the model's entry nor
    ``defaults`` says (``defaults`` has no sampling keys: these are the built-in values)."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    """0: off."""
    min_p: float = 0.0
    """0: off."""


SAMPLING_DEFAULTS = SamplingDefaults()


@dataclass(frozen=True)
class ResolvedModelSettings:
    """A model's effective settings (its own keys over ``defaults`` over built-in values)."""

    model_id: str
    # Per request: sampling and output
    max_tokens: int
    """Default ``max_tokens`` of a request that names none (before the pressure cap)."""
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    reasoning_response: Literal["enable", "disable"] | None
    """None: reasoning stays in the content, except where the format needs separating (harmony)."""
    tool_parser: str | None
    """The configured call format; None: the one its chat template teaches (decided by the worker)."""
    supports_tools: bool
    supports_vision: bool
    supports_embeddings: bool
    embedding_pooling: Literal["mean", "last", "cls"] | None
    """None: the checkpoint's own (its pooling file, or an embedding model's own vector), else mean."""
    embedding_dimensions: list[int] | Literal["any"] | None
    """Shorter embedding sizes allowed (Matryoshka), declared or known; None: the full size only."""
    memory_pressure_max_tokens: Mapping[str, int]
    """Cap on ``max_tokens`` per pressure level; empty: no cap."""
    # Per load and residency
    chat_template: str
    """``auto`` (the tokenizer's own) or a named template."""
    context_length: int | None
    """Configured context window; None: the model's own (known once loaded)."""
    max_batch_size: int
    max_queue: int
    prefix_cache_bytes: int
    keep_alive: float
    """Idle seconds before an unload; 0: no limit."""
    required_memory_gb: float | None
    """Configured memory need; None: measured."""
    pin: bool
    preload: bool

    @property
    def required_memory_bytes(self) -> int | None:
        return None if self.required_memory_gb is None else int(self.required_memory_gb * GB)

    @property
    def queue_limit(self) -> int:
        """Sequences the model may have running or waiting: its batch plus its queue."""
        return self.max_batch_size + self.max_queue

    def max_tokens_cap(self, level: str) -> int | None:
        """The ``max_tokens`` cap at a memory-pressure level, if the model has one."""
        return self.memory_pressure_max_tokens.get(level)


def _first(own: T | None, fallback: T) -> T:
    """The model's own value when it has one (0 and empty values included), else the fallback."""
    return fallback if own is None else own


def resolve_model_settings(
    entry: ModelEntry, defaults: Defaults, budget_bytes: int, sampling: SamplingDefaults = SAMPLING_DEFAULTS
) -> ResolvedModelSettings:
    """Resolve every key of ``entry`` once (``budget_bytes`` sizes the default prefix cache)."""
    config = entry.config
    return ResolvedModelSettings(
        model_id=entry.id,
        max_tokens=_first(config.max_tokens, defaults.max_tokens),
        temperature=_first(config.temp, sampling.temperature),
        top_p=_first(config.top_p, sampling.top_p),
        top_k=_first(config.top_k, sampling.top_k),
        min_p=_first(config.min_p, sampling.min_p),
        reasoning_response=config.reasoning_response,
        tool_parser=config.tool_parser,
        supports_tools=entry.supports_tools,
        supports_vision=entry.supports_vision,
        supports_embeddings=entry.supports_embeddings,
        embedding_pooling=config.embedding_pooling,
        embedding_dimensions=entry.embedding_dimensions,
        memory_pressure_max_tokens=dict(config.memory_pressure_max_tokens or {}),
        chat_template=_first(config.chat_template, "auto"),
        context_length=config.context_length,
        max_batch_size=_first(config.max_batch_size, defaults.max_batch_size),
        max_queue=_first(config.max_queue, defaults.max_queue),
        prefix_cache_bytes=prefix_cache_bytes(entry, defaults, budget_bytes),
        keep_alive=_first(config.keep_alive, defaults.keep_alive),
        required_memory_gb=config.required_memory_gb,
        pin=config.pin,
        preload=config.preload,
    )
