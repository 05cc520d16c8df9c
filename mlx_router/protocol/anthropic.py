"""``POST /v1/messages`` (Anthropic Messages API): request, response, stream events, errors.

A Messages request is translated into a chat request (:func:`to_chat`) that the generation
service runs like any other: system prompt, content blocks (images and PDF documents through
the media path), ``tool_use`` / ``tool_result`` history, tools, ``tool_choice`` and the thinking
switch. :class:`MessageBuilder` turns the chat chunks back into content blocks and, for streams,
into Anthropic's events in their order.

Unlike the OpenAI endpoints, fields this server does not know are accepted: Claude Code sends a
new beta field or tool type every few releases. They are dropped and named in the warnings.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from mlx_router.errors import RouterError
from mlx_router.protocol.agents import Piece, Warnings, chat_request, signature
from mlx_router.protocol.chat import ChatCompletionRequest
from mlx_router.protocol.common import new_id

__all__ = [
    "AnthropicErrorDetail",
    "AnthropicErrorResponse",
    "CountTokensRequest",
    "CountTokensResponse",
    "Message",
    "MessageBuilder",
    "MessagesRequest",
    "anthropic_error",
    "is_anthropic_path",
    "reasoning_choice",
    "to_chat",
]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
"""Chat finish reason → Anthropic stop reason."""
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
"""HTTP status → Anthropic error type (anything else is ``api_error``)."""
IGNORED_FIELDS = ("context_management", "output_config", "container", "mcp_servers", "service_tier", "inference_geo")
"""Top-level fields known from Claude Code and the API reference that ask for what this server
does not do; dropped with a warning."""


ANTHROPIC_PATHS = ("/v1/messages",)
"""Routes of the Anthropic API: their errors use Anthropic's envelope."""


def is_anthropic_path(path: str) -> bool:
    return path.startswith(ANTHROPIC_PATHS)


def anthropic_error(error: RouterError) -> dict[str, Any]:
    """The Anthropic error envelope for ``error``."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(error.status_code, "api_error"), "message": error.message}}


class _Wire(BaseModel):
    """Request objects: unknown fields are kept (and reported), never refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---------------------------------------------------------------------- content blocks


class CacheControlled(_Wire):
    cache_control: dict[str, Any] | None = None


class TextBlock(CacheControlled):
    type: Literal["text"]
    text: str


class Base64Source(_Wire):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(_Wire):
    type: Literal["url"]
    url: str


class TextSource(_Wire):
    type: Literal["text"]
    media_type: str = "text/plain"
    data: str


class ImageBlock(CacheControlled):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


class DocumentBlock(CacheControlled):
    type: Literal["document"]
    source: Annotated[Base64Source | URLSource | TextSource, Field(discriminator="type")]
    title: str | None = None
    context: str | None = None


class ToolUseBlock(CacheControlled):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(CacheControlled):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock | OtherBlock] | None = None
    is_error: bool = False


class ThinkingBlock(_Wire):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Wire):
    type: Literal["redacted_thinking"]
    data: str


class OtherBlock(_Wire):
    """A block type this server has no use for (server tool results, search results, …)."""

    type: str


_BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")


def _block_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _BLOCK_TYPES else "other"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")] | Annotated[DocumentBlock, Tag("document")] | Annotated[ToolUseBlock, Tag("tool_use")] | Annotated[ToolResultBlock, Tag("tool_result")] | Annotated[ThinkingBlock, Tag("thinking")] | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")] | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]


class InputMessage(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


# ---------------------------------------------------------------------- tools and switches


class CustomTool(CacheControlled):
    type: Literal["custom"] | None = None
    name: str = Field(..., min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]


class ServerTool(_Wire):
    """A tool Anthropic runs itself (web search, code execution, …) or a client tool with a
    versioned type (bash, text editor): there is nobody here to run it."""

    type: str
    name: str | None = None


def _tool_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "custom" if value.get("type") in (None, "custom") and "input_schema" in value else "server"
    return "custom" if isinstance(value, CustomTool) else "server"


Tool = Annotated[
    Annotated[CustomTool, Tag("custom")] | Annotated[ServerTool, Tag("server")], Discriminator(_tool_kind)
]


class ToolChoice(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Wire):
    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(None, ge=0)


class MessagesRequest(_Wire):
    model: str = Field(..., min_length=1, max_length=512)
    max_tokens: int = Field(..., ge=1)
    messages: list[InputMessage] = Field(..., min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    metadata: dict[str, Any] | None = None
    stream: bool | None = None


class CountTokensRequest(MessagesRequest):
    max_tokens: int = Field(1, ge=1)
    """Not part of a count request; a stand-in for the sequence that is never generated."""


class CountTokensResponse(BaseModel):
    input_tokens: int


# ---------------------------------------------------------------------- request → chat


def _data_uri(source: Base64Source | URLSource) -> str:
    if isinstance(source, URLSource):
        return source.url
    return f"data:{source.media_type};base64,{source.data}"


def _text_of(blocks: list[Any], warnings: Warnings, where: str) -> tuple[str, list[dict[str, Any]]]:
    """Text blocks joined, and image or PDF blocks as image parts (a tool message carries text
    only, so they travel in the user message that follows); other blocks are named as dropped."""
    texts: list[str] = []
    media: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, (ImageBlock, DocumentBlock)) and not isinstance(block.source, TextSource):
            media.append({"type": "image_url", "image_url": {"url": _data_uri(block.source)}})
        elif isinstance(block, DocumentBlock) and isinstance(block.source, TextSource):
            texts.append(block.source.data)
        else:
            warnings.add(f"{block.type} blocks in {where} are not supported and were dropped")
    return "\n".join(texts), media


def _note_block(block: Any, warnings: Warnings) -> None:
    if isinstance(block, CacheControlled) and block.cache_control is not None:
        warnings.add("cache_control was ignored (the prefix cache is automatic)")
    warnings.ignored_fields(block.model_extra if not isinstance(block, OtherBlock) else None, f"{block.type}.")


def _user_messages(message: InputMessage, index: int, warnings: Warnings) -> list[dict[str, Any]]:
    """A user turn: its tool results become ``tool`` messages (first, as the calls they answer
    came just before), the rest one user message."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        _note_block(block, warnings)
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": _data_uri(block.source)}})
        elif isinstance(block, DocumentBlock):
            if isinstance(block.source, TextSource):
                title = f"{block.title}\n\n" if block.title else ""
                parts.append({"type": "text", "text": title + block.source.data})
            else:  # a PDF: rendered page by page by the media path
                parts.append({"type": "image_url", "image_url": {"url": _data_uri(block.source)}})
        elif isinstance(block, ToolResultBlock):
            content = block.content
            text, media = (content, []) if isinstance(content, str) else _text_of(content or [], warnings, "tool_result")
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": f"Error: {text}" if block.is_error else text})
            if media:
                parts.append({"type": "text", "text": f"(attached by the result of {block.tool_use_id})"})
                parts.extend(media)
        elif isinstance(block, OtherBlock):
            warnings.add(f"{block.type} blocks are not supported and were dropped")
        else:  # thinking or tool_use in a user turn: not something a user writes
            warnings.add(f"{block.type} blocks in user messages were dropped (messages[{index}])")
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _assistant_message(message: InputMessage, warnings: Warnings) -> dict[str, Any]:
    """An assistant turn: text and tool calls; earlier reasoning is not sent back (chat
    templates drop it from history too)."""
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        _note_block(block, warnings)
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": json.dumps(block.input)}})
        elif isinstance(block, (ThinkingBlock, RedactedThinkingBlock)):
            continue
        else:
            warnings.add(f"{block.type} blocks in assistant messages are not supported and were dropped")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tools(req: MessagesRequest, warnings: Warnings) -> list[dict[str, Any]]:
    tools = []
    for tool in req.tools or ():
        if isinstance(tool, ServerTool):
            warnings.add(f"tool type {tool.type!r} ({tool.name or 'unnamed'}) cannot run here and was dropped")
            continue
        _note_block(tool, warnings)
        function = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    return tools


def to_chat(req: MessagesRequest, *, max_tokens_limit: int) -> tuple[ChatCompletionRequest, Warnings]:
    """The chat request that runs ``req``, and what of ``req`` is not done.

    ``max_tokens`` beyond the server's limit is lowered to it (and the worker lowers it further
    to what the context leaves): Claude Code always asks for 32000, and the answer then ends
    with ``stop_reason: max_tokens`` instead of a refusal."""
    warnings = Warnings()
    warnings.ignored_fields(req.model_extra)
    messages: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n\n".join(block.text for block in req.system)
        for block in req.system if isinstance(req.system, list) else ():
            _note_block(block, warnings)
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(req.messages):
        if message.role == "user":
            messages.extend(_user_messages(message, index, warnings))
        else:
            messages.append(_assistant_message(message, warnings))
    tools = _tools(req, warnings)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": min(req.max_tokens, max_tokens_limit),
        "stream": bool(req.stream),  # non-streaming jobs keep defaults.timeout
        "streaming_format": "sse",
    }
    for name in ("temperature", "top_p", "top_k"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    if tools:
        body["tools"] = tools
    choice = req.tool_choice
    if choice is not None and (tools or choice.type == "none"):
        if choice.type == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name or ""}}
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if req.thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": req.thinking.type != "disabled"}
        if req.thinking.budget_tokens is not None:
            warnings.add("thinking.budget_tokens is not enforced (the model thinks until it answers)")
    return chat_request(body, {"messages": "messages", "stop": "stop_sequences", "tools": "tools"}), warnings


def reasoning_choice(req: MessagesRequest) -> Literal["enable", "disable"] | None:
    """Whether the answer's separated reasoning is returned as ``thinking`` blocks: asked for
    (``enabled``/``adaptive``) it is, whatever the model's ``reasoning_response``; ``disabled``
    drops it (never shown as text); not asked: the model's setting."""
    if req.thinking is None:
        return None
    return "disable" if req.thinking.type == "disabled" else "enable"


# ---------------------------------------------------------------------- response


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[dict[str, Any]]
    model: str
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage


def usage_of(prompt_tokens: int, cached_tokens: int, output_tokens: int, cache_creation_tokens: int = 0) -> Usage:
    """Anthropic counts prompt tokens read from the cache apart from the others (``input_tokens``
    is the rest, including ``cache_creation_input_tokens``, the part written to the cache)."""
    return Usage(
        input_tokens=prompt_tokens - cached_tokens,
        output_tokens=output_tokens,
        cache_creation_input_tokens=cache_creation_tokens,
        cache_read_input_tokens=cached_tokens,
    )


Event = tuple[str, dict[str, Any]]
"""(event name, data): the name is also the data's ``type``."""


class MessageBuilder:
    """Chat pieces in, content blocks and Anthropic stream events out, in order.

    One block is open at a time: a piece of another kind closes it (a thinking block gets its
    ``signature_delta`` first) and opens the next. A tool call is one ``tool_use`` block whose
    ``input_json_delta`` events carry the arguments as they come."""

    def __init__(self, model: str, prompt_tokens: int, cached_tokens: int, cache_creation_tokens: int = 0) -> None:
        self.message = Message(
            id=new_id("msg").replace("-", "_"),
            content=[],
            model=model,
            usage=usage_of(prompt_tokens, cached_tokens, 0, cache_creation_tokens),
        )
        self._open: str | None = None
        self._arguments: list[str] = []

    def start(self) -> list[Event]:
        return [
            ("message_start", {"type": "message_start", "message": self.message.model_dump()}),
            ("ping", {"type": "ping"}),
        ]

    def feed(self, piece: Piece) -> list[Event]:
        if piece.kind == "finish":
            self.message.stop_reason = STOP_REASONS.get(piece.text, "end_turn")
            return self._close()
        if piece.kind == "arguments":
            self._arguments.append(piece.text)
            return [self._delta({"type": "input_json_delta", "partial_json": piece.text})]
        events: list[Event] = []
        if piece.kind == "call":
            events += self._close()
            events += self._begin("tool_use", {"type": "tool_use", "id": piece.call_id, "name": piece.name, "input": {}})
            return events
        kind = "thinking" if piece.kind == "reasoning" else "text"
        if self._open != kind:
            events += self._close()
            empty = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            events += self._begin(kind, empty)
        block = self.message.content[-1]
        block[kind] += piece.text
        delta = {"type": "thinking_delta", "thinking": piece.text} if kind == "thinking" else {"type": "text_delta", "text": piece.text}
        events.append(self._delta(delta))
        return events

    def finish(self, output_tokens: int, stop_sequence: str | None = None) -> list[Event]:
        """The last events, once the answer's usage (and the stop string that ended it, if
        one did) is known."""
        events = self._close()
        self.message.usage.output_tokens = output_tokens
        usage = self.message.usage.model_dump()
        reason = self.message.stop_reason or "end_turn"
        if stop_sequence is not None and reason == "end_turn":
            reason, self.message.stop_sequence = "stop_sequence", stop_sequence
        delta = {"stop_reason": reason, "stop_sequence": self.message.stop_sequence}
        self.message.stop_reason = reason
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    # ------------------------------------------------------------------ blocks

    def _begin(self, kind: str, block: dict[str, Any]) -> list[Event]:
        self._open = kind
        self.message.content.append(dict(block))
        index = len(self.message.content) - 1
        return [("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})]

    def _delta(self, delta: dict[str, Any]) -> Event:
        return ("content_block_delta", {"type": "content_block_delta", "index": len(self.message.content) - 1, "delta": delta})

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events: list[Event] = []
        block = self.message.content[-1]
        if self._open == "thinking":
            block["signature"] = signature(block["thinking"])
            events.append(self._delta({"type": "signature_delta", "signature": block["signature"]}))
        elif self._open == "tool_use":
            arguments = "".join(self._arguments)
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                parsed = None
            block["input"] = parsed if isinstance(parsed, dict) else {"arguments": arguments}
            self._arguments = []
        events.append(("content_block_stop", {"type": "content_block_stop", "index": len(self.message.content) - 1}))
        self._open = None
        return events


class AnthropicErrorDetail(BaseModel):
    type: str
    """``invalid_request_error``, ``authentication_error``, ``permission_error``, ``not_found_error``,
    ``request_too_large``, ``rate_limit_error``, ``api_error`` or ``overloaded_error``."""
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error envelope, which the Messages routes answer errors in."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
