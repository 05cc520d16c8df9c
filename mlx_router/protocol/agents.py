"""What the two agent APIs (Anthropic Messages, OpenAI Responses) share on top of chat.

Both are translation layers: a request becomes a :class:`~mlx_router.protocol.chat.ChatCompletionRequest`
that the generation service runs like any other, and its chat chunks are read back as
:class:`Piece` values (reasoning text, answer text, a tool call, the finish) that each API's
state machine turns into its own blocks or items and stream events.

Agent clients send fields and tool types that ask for something this server cannot do (prompt
caching hints, server-side tools, context management). Refusing them would break the client with
each of its releases, so they are accepted, dropped and named in :class:`Warnings`, which the
route returns in the ``X-MLX-Router-Warnings`` header.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from mlx_router.errors import InvalidRequest
from mlx_router.protocol.chat import ChatCompletionChunk, ChatCompletionRequest

__all__ = ["Piece", "Warnings", "chat_request", "pieces", "signature"]


class Warnings:
    """What a request asked for that is not done, each named once, in order of appearance."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if message not in self.items:
            self.items.append(message)

    def ignored_fields(self, fields: dict[str, Any] | None, where: str = "") -> None:
        """Unknown fields of a request object (pydantic's ``model_extra``)."""
        for name in fields or {}:
            self.add(f"{where}{name} is not supported here and was ignored")


@dataclass(frozen=True, slots=True)
class Piece:
    """One thing a chat chunk says about the answer, in order."""

    kind: Literal["reasoning", "text", "call", "arguments", "finish"]
    text: str = ""
    """Reasoning or answer text, a call's arguments, or the chat finish reason."""
    call_id: str = ""
    name: str = ""
    """``call``: the function called."""


def pieces(chunk: ChatCompletionChunk) -> Iterator[Piece]:
    """The pieces of one chat chunk of a single-choice stream."""
    for choice in chunk.choices:
        delta = choice.delta
        if delta.reasoning_content:
            yield Piece("reasoning", delta.reasoning_content)
        if delta.content:
            yield Piece("text", delta.content)
        for call in delta.tool_calls or ():
            if call.id is not None:
                yield Piece("call", call_id=call.id, name=call.function.name or "")
            if call.function.arguments:
                yield Piece("arguments", call.function.arguments)
        if choice.finish_reason is not None:
            yield Piece("finish", choice.finish_reason)


def chat_request(body: dict[str, Any], param_names: dict[str, str]) -> ChatCompletionRequest:
    """Validate the translated chat request; a problem is reported under the agent API's own
    parameter name (``param_names`` maps chat names to it)."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(p) for p in error.get("loc", ()) if not str(p).startswith(("function-", "list[", "str"))]
        param = param_names.get(loc[0], loc[0]) if loc else None
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for {param}: {message}", param=param, code="invalid_value") from None


def signature(text: str) -> str:
    """An opaque signature for a reasoning block (clients send it back; it is not checked)."""
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
