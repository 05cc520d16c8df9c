"""``POST /v1/chat/completions``: request, response and stream chunk.

Fields follow the order of the OpenAI reference. Extensions used by local servers
(``top_k``, ``min_p``, ``repetition_penalty``, ``streaming_format``) are grouped at the end.
Every numeric field is bounded; a field this server cannot honour yet is refused with a 400
naming it (see ``unsupported_features``), never silently dropped.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_serializer, model_validator

from mlx_router.engine.types import TokenLogprob
from mlx_router.errors import InvalidRequest
from mlx_router.protocol.common import OpenAIRequest, OpenAIResponse, Usage
from mlx_router.protocol.sampling import SamplingRequest

__all__ = [
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatLogprobs",
    "ChatMessage",
    "chat_logprobs",
    "chunk_json",
    "tool_call",
    "tool_call_deltas",
]

MAX_MESSAGES = 4096
REASONING_EFFORTS = ("minimal", "low", "medium", "high")
CHAT_TEMPLATE_KWARGS: dict[str, type] = {
    "enable_thinking": bool,  # Qwen3, GLM, Granite: think or answer directly
    "thinking": bool,  # DeepSeek-V3.1 style switch
    "reasoning_effort": str,  # gpt-oss: low / medium / high
}
"""Template variables a request may set; anything else could change the prompt in ways the
operator did not expect, so it is refused."""


class TextPart(OpenAIRequest):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIRequest):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(OpenAIRequest):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(OpenAIRequest):
    name: str
    arguments: str


class ToolCall(OpenAIRequest):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def to_template(self) -> dict[str, Any]:
        """Templates (Hugging Face convention) expect the arguments as an object; OpenAI sends
        a JSON string. Valid JSON objects are parsed; anything else is passed as sent."""
        arguments: Any = self.function.arguments
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            arguments = parsed
        return {"id": self.id, "type": "function", "function": {"name": self.function.name, "arguments": arguments}}


def _role_rules_schema(schema: dict[str, Any]) -> None:
    """The JSON schema states what ``_role_rules`` checks: content is required (and not null)
    except for an assistant message with ``tool_calls`` or a ``refusal``; a tool message needs
    ``tool_call_id``; ``audio`` and ``function_call`` may only be null."""
    has = {name: {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in ("content", "tool_calls", "refusal", "tool_call_id")}
    for refused in ("audio", "function_call"):  # known to the spec, accepted only as null
        schema["properties"][refused] = {"type": "null", "description": "Accepted only as null."}
    schema["allOf"] = [
        {
            "if": {"properties": {"role": {"const": "assistant"}}},
            "then": {"anyOf": [has["content"], has["tool_calls"], has["refusal"]]},
            "else": has["content"],
        },
        {"if": {"properties": {"role": {"const": "tool"}}}, "then": has["tool_call_id"]},
    ]


class ChatMessage(OpenAIRequest):
    """A message of any role; the checks that depend on the role are in the validator (and,
    for the OpenAPI document, in ``_role_rules_schema``)."""

    model_config = ConfigDict(json_schema_extra=_role_rules_schema)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    """Known (an assistant's earlier audio answer); any value is refused: no audio here."""
    function_call: dict[str, Any] | None = None
    """Known (the deprecated form of ``tool_calls``); any value is refused."""

    @model_validator(mode="after")
    def _role_rules(self) -> ChatMessage:
        if self.audio is not None:
            raise ValueError("audio is not supported here: there is no audio output to refer to")
        if self.function_call is not None:
            raise ValueError("the deprecated function_call is not supported here; send tool_calls")
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
        if self.tool_calls:
            message["tool_calls"] = [call.to_template() for call in self.tool_calls]
        return message


class JSONSchemaFormat(OpenAIRequest):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only allowed with type json_schema, not {self.type}")
        return self

    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must match (None: free text)."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema":
            assert self.json_schema is not None
            return self.json_schema.schema_ or {"type": "object"}
        return None


class FunctionDefinition(OpenAIRequest):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _parameters_are_an_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Arguments are a JSON object, so a schema of another type could never be met."""
        kind = (value or {}).get("type", "object")
        if kind != "object" and not (isinstance(kind, list) and "object" in kind):
            raise ValueError(f'the parameters must be a JSON Schema of type "object", not {json.dumps(kind)}')
        return value


class ChatTool(OpenAIRequest):
    type: Literal["function"] = "function"
    function: FunctionDefinition

    def to_template(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, by_alias=True)


class NamedFunction(OpenAIRequest):
    name: str


class NamedToolChoice(OpenAIRequest):
    type: Literal["function"] = "function"
    function: NamedFunction


class PromptCacheOptions(OpenAIRequest):
    """Hints for OpenAI's prompt cache; accepted, the prefix cache needs none."""

    ttl: Literal["30m"] | None = None
    mode: Literal["implicit", "explicit"] | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = Field(None, max_length=4096)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    """Passed to the chat template (gpt-oss and others read it)."""
    # Identifiers and cache hints: accepted; the prefix cache matches prompts by their tokens.
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = Field(None, max_length=1024)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    # Known, served only in the value that asks for what this server does (see ``unsupported_features``).
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    modalities: list[Literal["text", "audio"]] | None = Field(None, max_length=2)
    verbosity: Literal["low", "medium", "high"] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    # Extension: variables for the model's chat template, from an allow-list.
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _allowed_template_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, item in (value or {}).items():
            expected = CHAT_TEMPLATE_KWARGS.get(key)
            if expected is None:
                raise ValueError(
                    f"{key!r} is not an allowed chat template variable; allowed: {', '.join(sorted(CHAT_TEMPLATE_KWARGS))}"
                )
            if not isinstance(item, expected) or (expected is str and item not in REASONING_EFFORTS):
                raise ValueError(f"{key!r} has the wrong type or value")
        return value

    def template_kwargs(self) -> dict[str, Any]:
        """Variables handed to the chat template."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", self.reasoning_effort)
        return kwargs

    def unsupported_features(self) -> None:
        """Refuse what this server does not implement yet, naming the parameter."""
        for param, message in self._unserved():
            raise InvalidRequest(message, param=param, code="unsupported_value")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs: true.", param="top_logprobs")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequest("tool_choice requires tools.", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if all(tool.function.name != name for tool in self.tools or ()):
                raise InvalidRequest(f"tool_choice names {name!r}, which is not one of the tools.", param="tool_choice")
        names = [tool.function.name for tool in self.tools or ()]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate is not None:
            raise InvalidRequest(f"Two tools are named {duplicate!r}.", param="tools")
        forced = self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)
        if forced and self.response_format is not None and self.response_format.type != "text":
            raise InvalidRequest(
                "response_format cannot be combined with a tool_choice that forces a call.", param="response_format"
            )

    def _unserved(self) -> list[tuple[str, str]]:
        """Spec parameters set to a value this server cannot honour: (parameter, message)."""
        unserved = [
            ("store", self.store is True, "completions are not stored (store: false is what happens)"),
            ("service_tier", self.service_tier not in (None, "auto", "default"), 'there is one service tier ("auto" or "default")'),
            ("modalities", "audio" in (self.modalities or ()), 'only text output exists (modalities: ["text"])'),
            ("verbosity", self.verbosity not in (None, "medium"), 'answers are as long as the model and max_tokens make them ("medium")'),
            ("audio", self.audio is not None, "audio output is not supported"),
            ("prediction", self.prediction is not None, "predicted outputs are not supported"),
            ("web_search_options", self.web_search_options is not None, "there is no web search"),
            ("moderation", self.moderation is not None, "there is no moderation model"),
            ("functions", self.functions is not None, "the deprecated functions are not supported; send tools"),
            ("function_call", self.function_call is not None, "the deprecated function_call is not supported; send tool_choice"),
        ]
        return [
            (param, f"{param} {json.dumps(getattr(self, param))[:80]} is not supported here: {why}.")
            for param, refused, why in unserved
            if refused
        ]

    def offered_tools(self) -> list[ChatTool]:
        """The tools the model is told about (none for ``tool_choice: none``)."""
        return [] if self.tool_choice == "none" else list(self.tools or ())

    def forced_tools(self) -> list[ChatTool] | None:
        """The tools one of which must be called (``required`` or a named function), else None."""
        if self.tool_choice == "required":
            return list(self.tools or ())
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            return [tool for tool in self.tools or () if tool.function.name == name]
        return None

    def first_image(self) -> int | None:
        """Index of the first message carrying an image part, if any."""
        return next((i for i, m in enumerate(self.messages) if m.has_images()), None)

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def logprob_request(self) -> tuple[bool, int]:
        return bool(self.logprobs), self.top_logprobs or 0


class ResponseMessage(OpenAIResponse):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None
    """Reasoning separated from the answer (models with ``reasoning_response: enable``)."""

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("reasoning_content", "tool_calls"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class TopLogprob(OpenAIResponse):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(OpenAIResponse):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class Choice(OpenAIResponse):
    index: int
    message: ResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class ChatCompletionResponse(OpenAIResponse):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionCallDelta(OpenAIResponse):
    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ToolCallDelta(OpenAIResponse):
    """One piece of a streamed tool call: the first names it, the next carry its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class Delta(OpenAIResponse):
    """A stream delta; absent fields are left out (the schema does not allow ``role: null``)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(OpenAIResponse):
    index: int = 0
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None


class ChatCompletionChunk(OpenAIResponse):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


_CONTENT_TEMPLATES: dict[tuple[str, int, str, str | None, int], tuple[str, str]] = {}
"""Per stream and choice: the JSON of a content chunk before and after its text."""


def chunk_json(chunk: ChatCompletionChunk) -> str:
    """The chunk's JSON exactly as ``model_dump_json`` writes it.

    Most chunks of a stream carry one choice's text and nothing else; pydantic serializing
    three models for each is a large part of the router's cost per token. Such a chunk is
    written from its stream's template (made once, by pydantic) with the text escaped as
    pydantic escapes it (control characters as ``\\u00xx``, other characters as they are)."""
    choices = chunk.choices
    if len(choices) == 1 and chunk.usage is None and not chunk.model_extra:
        choice = choices[0]
        delta = choice.delta
        content = delta.content
        if (
            content is not None
            and delta.role is None
            and delta.reasoning_content is None
            and delta.tool_calls is None
            and choice.logprobs is None
            and choice.finish_reason is None
            and not choice.model_extra
            and not delta.model_extra
        ):
            key = (chunk.id, chunk.created, chunk.model, chunk.system_fingerprint, choice.index)
            parts = _CONTENT_TEMPLATES.get(key)
            if parts is None:
                if len(_CONTENT_TEMPLATES) >= 4096:  # one entry per stream: forget old streams
                    _CONTENT_TEMPLATES.clear()
                empty = ChunkChoice(index=choice.index, delta=Delta(content=""))
                head, _, tail = chunk.model_copy(update={"choices": [empty]}).model_dump_json().partition('"content":""')
                parts = _CONTENT_TEMPLATES[key] = (head + '"content":', tail)
            return parts[0] + encode_basestring(content) + parts[1]
    return chunk.model_dump_json()


# ---------------------------------------------------------------------- converters (pure)


def chat_logprobs(tokens: list[TokenLogprob]) -> ChatLogprobs:
    """Generated tokens' log-probabilities in the chat shape."""
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token_bytes),
                top_logprobs=[TopLogprob(token=s, logprob=lp, bytes=list(b)) for s, b, lp in t.top],
            )
            for t in tokens
        ],
        refusal=None,
    )


def tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    """A call of a complete answer (``arguments`` is a JSON string)."""
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))


def tool_call_deltas(call_id: str, name: str, arguments: str, index: int) -> list[Delta]:
    """A call as OpenAI streams one: id, type and name with empty arguments, then the arguments."""
    return [
        Delta(tool_calls=[ToolCallDelta(index=index, id=call_id, type="function", function=FunctionCallDelta(name=name, arguments=""))]),
        Delta(tool_calls=[ToolCallDelta(index=index, function=FunctionCallDelta(arguments=arguments))]),
    ]
