"""Shared wire types: the base model, usage and the error envelope."""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ErrorBody",
    "ErrorResponse",
    "OpenAIRequest",
    "OpenAIResponse",
    "PromptTokensDetails",
    "Usage",
    "new_id",
    "now",
    "usage",
]


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

