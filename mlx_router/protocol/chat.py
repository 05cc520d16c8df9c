"""``POST /v1/chat/completions``: request, response and stream chunk.

Fields follow the order of the OpenAI reference. Extensions used by local servers
(``top_k``, ``min_p``, ``repetition_penalty``, ``streaming_format``) are grouped at the end.
Every numeric field is bounded; a field this server cannot honour yet is refused with a 400
naming it (see ``unsupported_features``), never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, field_validator, model_serializer, model_validator

from mlx_router.engine.types import GenerationParams
from mlx_router.errors import InvalidRequest
from mlx_router.protocol.common import OpenAIRequest, OpenAIResponse, Usage

__all__ = [
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "ModelDefaults",
    "StreamOptions",
]

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_MESSAGES = 4096


class TextPart(OpenAIRequest):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIRequest):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(OpenAIRequest):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class FunctionCall(OpenAIRequest):
    name: str
    arguments: str


class ToolCall(OpenAIRequest):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIRequest):
    """A message of any role; the checks that depend on the role are in the validator."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _role_rules(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.refusal)):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def text(self) -> str:
        """The message content as one string (text parts joined in order)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, ImagePart) for p in self.content)

    def to_template(self) -> dict[str, Any]:
        """The dict a chat template expects; ``developer`` is treated as ``system``."""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text(),
        }
        if self.name:
            message["name"] = self.name
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


class StreamOptions(OpenAIRequest):
    include_usage: bool = False


class ResponseFormat(OpenAIRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ModelDefaults(BaseModel):
    """Sampling defaults of one model (config.json), applied where a request is silent."""

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens_cap: int | None = None
    """A lower bound from memory pressure, if any."""


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    model: str = Field(..., min_length=1, max_length=512)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    n: int | None = Field(None, ge=1, le=16)
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    # Extensions common to local servers.
    top_k: int | None = Field(None, ge=0, le=1000)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    streaming_format: Literal["sse", "json_lines", "json_array"] | None = None

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"each stop sequence may be at most {MAX_STOP_LENGTH} characters")
        return value

    def unsupported_features(self) -> None:
        """Refuse what this server does not implement yet, naming the parameter."""
        if self.n not in (None, 1):
            raise InvalidRequest("n > 1 is not supported: only one choice is generated per request.", param="n")
        if self.logprobs:
            raise InvalidRequest("logprobs are not supported yet.", param="logprobs")
        if self.top_logprobs:
            raise InvalidRequest("top_logprobs requires logprobs, which are not supported yet.", param="top_logprobs")
        if self.tool_choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice requires tools, which are not supported yet.", param="tool_choice")
        if self.response_format is not None and self.response_format.type != "text":
            raise InvalidRequest(
                f"response_format {self.response_format.type!r} is not supported yet.", param="response_format"
            )
        for index, message in enumerate(self.messages):
            if message.tool_calls:
                raise InvalidRequest(
                    "Assistant tool_calls are not supported yet.", param=f"messages[{index}].tool_calls"
                )

    def first_image(self) -> int | None:
        """Index of the first message carrying an image part, if any."""
        return next((i for i, m in enumerate(self.messages) if m.has_images()), None)

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def to_generation_params(self, defaults: ModelDefaults, *, max_tokens_limit: int) -> GenerationParams:
        """Resolve request values against the model's defaults."""
        requested = self.max_completion_tokens or self.max_tokens
        if requested is not None and requested > max_tokens_limit:
            param = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
            raise InvalidRequest(f"{param} must be at most {max_tokens_limit}.", param=param)
        max_tokens = requested or defaults.max_tokens
        if defaults.max_tokens_cap is not None:
            max_tokens = min(max_tokens, defaults.max_tokens_cap)
        logit_bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise InvalidRequest(f"logit_bias keys must be token ids, got {key!r}.", param="logit_bias")
            if not -100.0 <= value <= 100.0:
                raise InvalidRequest("logit_bias values must be between -100 and 100.", param="logit_bias")
            logit_bias[int(key)] = value
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
        )


class ResponseMessage(OpenAIResponse):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    reasoning_content: str | None = None
    """Reasoning separated from the answer (models with ``reasoning_response: enable``)."""

    @model_serializer(mode="wrap")
    def _drop_absent_reasoning(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("reasoning_content") is None:
            data.pop("reasoning_content", None)
        return data


class Choice(OpenAIResponse):
    index: int
    message: ResponseMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class ChatCompletionResponse(OpenAIResponse):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(OpenAIResponse):
    """A stream delta; absent fields are left out (the schema does not allow ``role: null``)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(OpenAIResponse):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None


class ChatCompletionChunk(OpenAIResponse):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
