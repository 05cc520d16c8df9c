"""``/v1/responses`` (OpenAI Responses API): request, response object, items and stream events.

A Responses request is translated into a chat request (:func:`to_chat`): ``instructions`` become
the system message, the stored conversation of ``previous_response_id`` comes first, then the
input items (messages, ``function_call`` and ``function_call_output`` items; ``reasoning`` items
are history the templates drop). ``text.format`` becomes the chat ``response_format`` (enforced
by the grammars), ``reasoning.effort`` the template's reasoning switch. :class:`ResponseBuilder`
turns the chat chunks into output items (``reasoning``, ``message``, ``function_call``) and the
semantic stream events, each with its ``sequence_number``.

Hosted or namespaced tools (``web_search``, ``namespace``, …) and fields that ask for what this
server cannot do are dropped and named in the warnings, never refused: Codex sends them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from mlx_router.protocol.agents import Piece, Warnings, chat_request
from mlx_router.protocol.chat import ChatCompletionRequest
from mlx_router.protocol.common import new_id, now

__all__ = ["ResponseBuilder", "ResponsesRequest", "input_items", "reasoning_choice", "to_chat"]

EFFORTS = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
"""Responses reasoning effort → the chat ``reasoning_effort`` handed to the template."""
SUPPORTED_INCLUDES: frozenset[str] = frozenset()
"""``include`` values this server fills in (none yet: no encrypted reasoning, no logprobs)."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _id(prefix: str) -> str:
    return new_id(prefix).replace("-", "_")


# ---------------------------------------------------------------------- input items


class ContentPart(_Wire):
    """``input_text`` / ``output_text`` / ``input_image`` / ``input_file`` / ``refusal``."""

    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None
    file_data: str | None = None
    file_url: str | None = None
    file_id: str | None = None
    filename: str | None = None


class MessageItem(_Wire):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Wire):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class ReasoningItem(_Wire):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = Field(default_factory=list)


class OtherItem(_Wire):
    type: str


_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def _item_kind(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("type") or ("message" if "role" in value else None)
    elif isinstance(value, OtherItem):  # an item already read (serialized again)
        return "other"
    else:
        kind = getattr(value, "type", None) or "message"
    return kind if kind in _ITEM_TYPES else "other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")] | Annotated[FunctionCallOutputItem, Tag("function_call_output")] | Annotated[ReasoningItem, Tag("reasoning")] | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_kind),
]


# ---------------------------------------------------------------------- request


class FunctionTool(_Wire):
    type: Literal["function"]
    name: str = Field(..., min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class HostedTool(_Wire):
    """A tool OpenAI runs (web search, file search, …) or a namespace of tools: not here."""

    type: str
    name: str | None = None


def _tool_kind(value: Any) -> str | None:
    """``function`` tools apart from the hosted ones; None for what is not a tool object at all
    (``null``, a string), which the discriminator's own error then names."""
    if isinstance(value, dict):
        return "function" if value.get("type") == "function" else "hosted"
    if isinstance(value, (FunctionTool, HostedTool)):
        return "function" if isinstance(value, FunctionTool) else "hosted"
    return None


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[HostedTool, Tag("hosted")],
    Discriminator(_tool_kind, custom_error_type="invalid_tool", custom_error_message="a tool must be an object"),
]


class TextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Wire):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(_Wire):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class _Input(_Wire):
    """The fields of a response request that make its prompt."""

    input: str | list[InputItem] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None


class ResponsesRequest(_Input):
    model: str = Field(..., min_length=1, max_length=512)
    store: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    include: list[str] | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    prompt_cache_key: str | None = None
    stream: bool | None = None
    user: str | None = None

    def items(self) -> list[Any]:
        """The input as items (a string is one user message)."""
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)


class InputTokensRequest(_Input):
    """``POST /v1/responses/input_tokens``: the parts of a response request that make its input.
    Without ``model`` the server's default model (``defaults.model``) counts."""

    model: str | None = Field(None, min_length=1, max_length=512)

    def as_request(self, model: str) -> tuple[ResponsesRequest, dict[str, Any]]:
        """The response request whose input this is, with the unknown fields kept (so
        :func:`to_chat` reports them); and the fields of a response request that a count has
        no use for (``temperature``, ``store``, …), left out unread, to be reported too. Built
        from this request's own JSON, so every item is read the way a response request reads it."""
        data = self.model_dump(mode="json", exclude_unset=True, exclude={"model"})  # unknown fields included
        unused = {name: data.pop(name) for name in list(data) if name in ResponsesRequest.model_fields
                  and name not in _Input.model_fields}
        return ResponsesRequest.model_validate({**data, "model": model}), unused


class InputTokens(BaseModel):
    """The answer of ``POST /v1/responses/input_tokens`` (``TokenCountsResource``)."""

    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


# ---------------------------------------------------------------------- request → chat


def input_items(items: list[Any]) -> list[dict[str, Any]]:
    """Items as stored and listed by ``input_items``: each with an id and a type."""
    out = []
    for item in items:
        data = item.model_dump(by_alias=True, exclude_none=True)
        if isinstance(item, MessageItem):
            data["type"] = "message"
            data.setdefault("id", _id("msg"))
            data.setdefault("status", "completed")
            if isinstance(item.content, str):
                kind = "output_text" if item.role == "assistant" else "input_text"
                part: dict[str, Any] = {"type": kind, "text": item.content}
                if kind == "output_text":
                    part["annotations"] = []
                data["content"] = [part]
        elif isinstance(item, (FunctionCallItem, FunctionCallOutputItem)):
            data.setdefault("id", _id("fc" if isinstance(item, FunctionCallItem) else "fco"))
            data.setdefault("status", "completed")
        out.append(data)
    return out


def _parts(content: list[ContentPart], role: str, warnings: Warnings) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in content:
        if part.type in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.text or ""})
        elif part.type == "refusal":
            parts.append({"type": "text", "text": part.refusal or ""})
        elif part.type == "input_image" and part.image_url:
            image: dict[str, Any] = {"url": part.image_url}
            if part.detail in ("low", "high", "auto"):
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
        elif part.type == "input_file" and (part.file_data or part.file_url):
            url = part.file_url or part.file_data or ""
            if not url.startswith(("data:", "http://", "https://")):
                url = f"data:application/pdf;base64,{url}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            warnings.add(f"{part.type} content (file ids, …) is not supported and was dropped")
    if role != "user":  # images go in user turns only: other roles keep their text
        parts = [p for p in parts if p["type"] == "text"]
    return parts


def _text(parts: list[dict[str, Any]]) -> str:
    return "".join(p["text"] for p in parts if p["type"] == "text")


def chat_messages(items: list[Any], warnings: Warnings) -> list[dict[str, Any]]:
    """Items (stored dicts or request models) as chat messages."""
    messages: list[dict[str, Any]] = []
    for raw in items:
        item = _parse_item(raw) if isinstance(raw, dict) else raw
        if isinstance(item, MessageItem):
            if isinstance(item.content, str):
                messages.append({"role": item.role, "content": item.content})
                continue
            parts = _parts(item.content, item.role, warnings)
            if item.role == "user" and any(p["type"] == "image_url" for p in parts):
                messages.append({"role": "user", "content": parts})
            else:
                messages.append({"role": item.role, "content": _text(parts)})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # calls after the text of one turn
                last.setdefault("tool_calls", []).append(call)
                if not last["content"]:
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else _text(_parts(item.output, "tool", warnings))
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        elif isinstance(item, ReasoningItem):
            continue  # earlier reasoning: chat templates leave it out of the history
        else:
            warnings.add(f"input items of type {item.type!r} are not supported and were dropped")
    return messages


_ITEM = TypeAdapter(InputItem)


def _parse_item(data: dict[str, Any]) -> Any:
    return _ITEM.validate_python(data)


def _tool_choice(choice: str | dict[str, Any] | None, warnings: Warnings) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    warnings.add(f"tool_choice {json.dumps(choice)} is not supported; auto was used")
    return "auto"


def reasoning_choice(req: ResponsesRequest) -> Literal["enable", "disable"] | None:
    """Whether the answer's separated reasoning is returned as ``reasoning`` items: asked for
    (an ``effort`` other than ``none``, or a ``summary``) it is, whatever the model's
    ``reasoning_response``; ``effort: none`` drops it (never shown as text); not asked: the
    model's setting."""
    reasoning = req.reasoning
    if reasoning is None:
        return None
    if reasoning.effort == "none":
        return "disable"
    if reasoning.effort is not None or reasoning.summary is not None or reasoning.generate_summary is not None:
        return "enable"
    return None


def to_chat(
    req: ResponsesRequest, history: list[dict[str, Any]], *, max_tokens_limit: int
) -> tuple[ChatCompletionRequest, Warnings]:
    """The chat request that runs ``req`` after ``history`` (the stored items of the previous
    response, its output included), and what of ``req`` is not done."""
    warnings = Warnings()
    warnings.ignored_fields(req.model_extra)
    for item in req.items():
        warnings.ignored_fields(item.model_extra if not isinstance(item, OtherItem) else None, f"{item.type}.")
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages += chat_messages([*history, *req.items()], warnings)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "stream": bool(req.stream),  # non-streaming jobs keep defaults.timeout
        "streaming_format": "sse",
    }
    if req.max_output_tokens is not None:
        body["max_tokens"] = min(req.max_output_tokens, max_tokens_limit)
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    tools = []
    for tool in req.tools or ():
        if isinstance(tool, HostedTool):
            warnings.add(f"tool type {tool.type!r} cannot run here and was dropped")
            continue
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters or {"type": "object", "properties": {}}}
        if tool.description:
            function["description"] = tool.description
        if tool.strict is not None:
            function["strict"] = tool.strict
        tools.append({"type": "function", "function": function})
    if tools:
        body["tools"] = tools
        choice = _tool_choice(req.tool_choice, warnings)
        if choice is not None:
            body["tool_choice"] = choice
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name or "answer", "schema": fmt.schema_ or {"type": "object"}, "strict": fmt.strict}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if req.reasoning is not None and req.reasoning.effort is not None:
        if req.reasoning.effort == "none":
            body["chat_template_kwargs"] = {"enable_thinking": False}
        else:
            body["reasoning_effort"] = EFFORTS[req.reasoning.effort]
    if req.truncation == "auto":
        warnings.add("truncation auto is not supported: a prompt longer than the context is refused")
    for include in req.include or ():
        if include not in SUPPORTED_INCLUDES:
            warnings.add(f"include {include!r} is not supported and was ignored")
    names = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}
    return chat_request(body, names), warnings


# ---------------------------------------------------------------------- response and events


Event = tuple[str, dict[str, Any]]


class ResponseBuilder:
    """Chat pieces in, output items and Responses stream events out, in order.

    Reasoning becomes a ``reasoning`` item whose summary carries the separated reasoning text,
    the answer a ``message`` item with one ``output_text`` part, each call a ``function_call``
    item. Every event gets the next ``sequence_number``."""

    def __init__(self, req: ResponsesRequest, model: str, *, store: bool) -> None:
        self.sequence = 0
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self._open: str | None = None
        fmt = req.text.format if req.text is not None and req.text.format is not None else None
        self.response: dict[str, Any] = {
            "id": _id("resp"),
            "object": "response",
            "created_at": now(),
            "status": "in_progress",
            "completed_at": None,
            "error": None,
            "incomplete_details": None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": model,
            "output": [],
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": req.reasoning.effort, "summary": req.reasoning.summary}
            if req.reasoning is not None
            else None,
            "store": store,
            "temperature": req.temperature,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or () if isinstance(t, FunctionTool)],
            "top_p": req.top_p,
            "truncation": req.truncation or "disabled",
            "metadata": req.metadata or {},
        }
        # usage (set at the end) and user are optional, not nullable
        if req.user is not None:
            self.response["user"] = req.user

    @property
    def output(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.response["output"])

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, event

    def _snapshot(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(json.dumps(self.response)))

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self._snapshot()),
            self._event("response.in_progress", response=self._snapshot()),
        ]

    def feed(self, piece: Piece) -> list[Event]:
        if piece.kind == "finish":
            self.finish = piece.text
            return self._close()
        if piece.kind == "arguments":
            item = self.output[-1]
            item["arguments"] += piece.text
            return [self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=len(self.output) - 1, delta=piece.text)]
        events: list[Event] = []
        if piece.kind == "call":
            events += self._close()
            item = {"type": "function_call", "id": _id("fc"), "call_id": piece.call_id, "name": piece.name, "arguments": "", "status": "in_progress"}
            return events + self._add("function_call", item)
        index = len(self.output) - 1
        if piece.kind == "reasoning":
            if self._open != "reasoning":
                events += self._close()
                events += self._add("reasoning", {"type": "reasoning", "id": _id("rs"), "summary": []})
                index = len(self.output) - 1
                part: dict[str, Any] = {"type": "summary_text", "text": ""}
                self.output[-1]["summary"].append(dict(part))
                events.append(self._event("response.reasoning_summary_part.added", item_id=self.output[-1]["id"], output_index=index, summary_index=0, part=part))
            item = self.output[-1]
            item["summary"][0]["text"] += piece.text
            events.append(self._event("response.reasoning_summary_text.delta", item_id=item["id"], output_index=index, summary_index=0, delta=piece.text))
            return events
        if self._open != "message":
            events += self._close()
            item = {"type": "message", "id": _id("msg"), "role": "assistant", "status": "in_progress", "content": []}
            events += self._add("message", item)
            index = len(self.output) - 1
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(json.loads(json.dumps(part)))
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part))
        item = self.output[-1]
        item["content"][0]["text"] += piece.text
        events.append(self._event("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0, delta=piece.text, logprobs=[]))
        return events

    def finish_with(self, prompt_tokens: int, cached_tokens: int, output_tokens: int, cache_write_tokens: int = 0) -> list[Event]:
        """The closing events once usage is known: ``response.completed`` or, for an answer cut
        by the token limit, ``response.incomplete``. ``cache_write_tokens``: the prompt tokens
        this request wrote to the prefix cache."""
        events = self._close()
        self.response["usage"] = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": cache_write_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens,
        }
        if self.finish == "length":
            self.response["status"] = "incomplete"
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
            events.append(self._event("response.incomplete", response=self._snapshot()))
        else:
            self.response["status"] = "completed"
            self.response["completed_at"] = now()
            events.append(self._event("response.completed", response=self._snapshot()))
        return events

    def fail(self, code: str, message: str) -> list[Event]:
        """An error during generation: the ``error`` event, then ``response.failed``."""
        self.response["status"] = "failed"
        self.response["error"] = {"code": "server_error", "message": message}
        return [
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=self._snapshot()),
        ]

    # ------------------------------------------------------------------ items

    def _add(self, kind: str, item: dict[str, Any]) -> list[Event]:
        self._open = kind
        self.output.append(item)
        snapshot = json.loads(json.dumps(item))
        return [self._event("response.output_item.added", output_index=len(self.output) - 1, item=snapshot)]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        item, index = self.output[-1], len(self.output) - 1
        status = "incomplete" if self.finish == "length" else "completed"
        events: list[Event] = []
        if self._open == "message":
            part = item["content"][0]
            events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=part["text"], logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=dict(part)))
        elif self._open == "reasoning":
            text = item["summary"][0]["text"]
            events.append(self._event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index, summary_index=0, text=text))
            events.append(self._event("response.reasoning_summary_part.done", item_id=item["id"], output_index=index, summary_index=0, part=dict(item["summary"][0])))
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index, name=item["name"], arguments=item["arguments"]))
        if self._open != "reasoning":
            item["status"] = status
        events.append(self._event("response.output_item.done", output_index=index, item=json.loads(json.dumps(item))))
        self._open = None
        return events
