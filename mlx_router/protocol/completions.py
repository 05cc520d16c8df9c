"""``POST /v1/completions`` (legacy text completions): request, response and stream chunk."""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import Field, field_validator, model_serializer

from mlx_router.engine.types import TokenLogprob
from mlx_router.errors import InvalidRequest
from mlx_router.protocol.common import OpenAIResponse, Usage
from mlx_router.protocol.sampling import SamplingRequest

__all__ = [
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "completion_finish",
    "legacy_logprobs",
    "text_length",
]

MAX_PROMPTS = 64


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1, le=128)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _bounded_prompt(cls, value: str | list[str] | list[int] | list[list[int]]) -> object:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], (str, list)) and len(value) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
            if isinstance(value[0], list) and any(not p for p in value):
                raise ValueError("token prompts must not be empty")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a string or a list of token ids."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [cast("list[int]", list(value))]  # validation makes a list of one item type
        return [p for p in value if not isinstance(p, int)]  # a list of strings or of token lists

    def unsupported_features(self) -> None:
        if self.suffix:
            raise InvalidRequest("suffix (fill-in-the-middle) is not supported.", param="suffix")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise InvalidRequest("best_of other than n is not supported.", param="best_of")
        if self.echo and self.logprobs is not None:
            raise InvalidRequest(
                "echo together with logprobs (prompt logprobs) is not supported.", param="logprobs"
            )

    def logprob_request(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0


class CompletionLogprobs(OpenAIResponse):
    """The legacy logprobs shape."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(OpenAIResponse):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class CompletionResponse(OpenAIResponse):
    """A text completion, or one chunk of a streamed one (same object)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_usage(self, handler: Any) -> dict[str, Any]:
        """The schema does not allow ``usage: null``: chunks without usage leave it out."""
        data: dict[str, Any] = handler(self)
        if data.get("usage") is None:
            data.pop("usage", None)
        return data


# ---------------------------------------------------------------------- converters (pure)


def legacy_logprobs(tokens: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    """Generated tokens' log-probabilities in the legacy shape; ``offset`` is where the first
    token's text starts in the choice's text."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += text_length(t)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{s: lp for s, _b, lp in t.top} for t in tokens],
        text_offset=offsets,
    )


def text_length(token: TokenLogprob) -> int:
    """Characters a token adds to the text (its name may be spelled ``bytes:…``)."""
    return len(token.token_bytes.decode("utf-8", errors="replace"))


def completion_finish(engine_reason: str | None) -> Literal["stop", "length"]:
    """A text completion's finish reason: ``length`` when a limit ended it, else ``stop``."""
    return "length" if engine_reason == "length" else "stop"
