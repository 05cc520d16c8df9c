"""Shared wire types: the base model, usage and the error envelope."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from mlx_router import __version__
from mlx_router.errors import InvalidRequest

__all__ = [
    "SYSTEM_FINGERPRINT",
    "ErrorBody",
    "ErrorResponse",
    "OpenAIRequest",
    "OpenAIResponse",
    "PromptTokensDetails",
    "Usage",
    "envelope",
    "finish_reason",
    "new_id",
    "now",
    "refuse_lone_surrogates",
    "usage",
]


SYSTEM_FINGERPRINT = f"fp_mlx_router_{__version__}"
R = TypeVar("R", bound=BaseModel)
WireFinish = Literal["stop", "length", "tool_calls", "content_filter"]


class OpenAIRequest(BaseModel):
    """Base of request bodies: unknown fields are refused, never silently ignored, and types are
    strict JSON types as in the spec (``"stream": "yes"`` or ``"n": "2"`` is refused, not
    coerced; an integer is accepted where a number is expected, as JSON allows)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class OpenAIResponse(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(extra="allow")


class PromptTokensDetails(OpenAIResponse):
    cached_tokens: int = 0


class Usage(OpenAIResponse):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def _surrogate_at(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) in ``value`` that is not valid Unicode."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = _surrogate_at(key, where) or _surrogate_at(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _surrogate_at(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def refuse_lone_surrogates(body: Any) -> Any:
    """A 400 naming the field when a request body holds a lone UTF-16 surrogate (JSON lets
    ``"\\ud800"`` through, but no tokenizer can encode it). For request bodies, before their
    validation: ``model_validator(mode="before")``."""
    where = _surrogate_at(body, "")
    if where is not None:
        raise InvalidRequest(
            f"{where or 'The request body'} holds a lone surrogate (an unpaired \\ud800-\\udfff escape); "
            "text must be valid Unicode.",
            param=where or None,
            code="invalid_value",
        )
    return body


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )



def envelope(cls: type[R], prefix: str, model: str) -> Callable[..., R]:
    """A maker of response objects of ``cls`` (or of the chunks of one stream, which share id
    and time): ``make(choices, usage=None)``."""
    response_id, created = new_id(prefix), now()

    def make(choices: list[Any], usage: Usage | None = None) -> R:
        return cls(
            id=response_id,
            created=created,
            model=model,
            choices=choices,
            usage=usage,
            system_fingerprint=SYSTEM_FINGERPRINT,
        )

    return make


def finish_reason(engine_reason: str | None, called: bool = False) -> WireFinish:
    """The wire finish reason of an engine one; an answer that ended normally after calling
    tools says ``tool_calls`` (a cancelled sequence ended normally as far as a client knows)."""
    if engine_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"
