"""Request fields shared by chat and text completions, and their resolution to engine params.

Every numeric field is bounded. Values a request omits come from the model's defaults in
config.json (``ModelDefaults``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlx_router.engine.types import GenerationParams
from mlx_router.errors import InvalidRequest
from mlx_router.protocol.common import OpenAIRequest, refuse_lone_surrogates

__all__ = ["MAX_STOP_LENGTH", "MAX_STOP_SEQUENCES", "ModelDefaults", "SamplingRequest", "StreamOptions"]

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256


class StreamOptions(OpenAIRequest):
    include_usage: bool = False
    include_obfuscation: bool | None = None
    """Accepted: OpenAI pads stream chunks against length side channels on the network; this
    server does not add the ``obfuscation`` field, whatever the value."""


@dataclass(frozen=True)
class ModelDefaults:
    """What one model uses where a request is silent: its settings, resolved once by the
    manager (``ResolvedModelSettings``), handed over as plain values."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_tokens_cap: int | None = None
    """A lower cap from memory pressure, if any."""


class SamplingRequest(OpenAIRequest):
    """Fields of both ``/v1/chat/completions`` and ``/v1/completions``."""

    model: str = Field(..., min_length=1, max_length=512)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = Field(None, max_length=256)
    # Extensions common to local servers.
    top_k: int | None = Field(None, ge=0, le=1000)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    streaming_format: Literal["sse", "json_lines", "json_array"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return refuse_lone_surrogates(data)

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"each stop sequence may be at most {MAX_STOP_LENGTH} characters")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The requested token budget and the parameter that carried it."""
        return self.max_tokens, "max_tokens"

    def logprob_request(self) -> tuple[bool, int]:
        """Whether logprobs are wanted, and how many alternatives per position."""
        return False, 0

    def to_generation_params(self, defaults: ModelDefaults, *, max_tokens_limit: int) -> GenerationParams:
        """Resolve request values against the model's defaults."""
        requested, param = self.requested_max_tokens()
        if requested is not None and requested > max_tokens_limit:
            raise InvalidRequest(f"{param} must be at most {max_tokens_limit} (defaults.max_tokens_limit).", param=param)
        max_tokens = requested or defaults.max_tokens
        if defaults.max_tokens_cap is not None:
            max_tokens = min(max_tokens, defaults.max_tokens_cap)
        logit_bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            if not key.isdigit():
                raise InvalidRequest(f"logit_bias keys must be token ids, got {key!r}.", param="logit_bias")
            if not -100.0 <= value <= 100.0:
                raise InvalidRequest("logit_bias values must be between -100 and 100.", param="logit_bias")
            logit_bias[int(key)] = value
        logprobs, top_logprobs = self.logprob_request()
        return GenerationParams(
            max_tokens=max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            min_p=defaults.min_p if self.min_p is None else self.min_p,
            seed=self.seed,
            stop=self.stop_list(),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty,
            logit_bias=logit_bias,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
