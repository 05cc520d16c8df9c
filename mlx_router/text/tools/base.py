"""The shape every tool-call format shares, and the stream that applies one to model output.

A format says where a call region starts (a marker such as ``<tool_call>``, or JSON at the very
start of the answer), where it ends (a marker, or the end of the output), and how to read the
calls inside it. :class:`ToolCallStream` does the rest for every format alike: text outside
regions is content, text that may still become a marker is held back (so no half-written markup
ever reaches a client), a region becomes calls once it is closed, and a region that cannot be
read is given back as content, unchanged, never raising.

With ``stream_arguments``, the stream also reports each call as :class:`CallDelta` pieces while
it is written: a format whose :meth:`ToolFormat.arguments_start` finds the function name and the
start of a JSON-object argument in a region still open (Hermes/Qwen, Llama 3 JSON, Mistral and
gpt-oss harmony, when the name comes before the arguments) has its arguments passed on as the
model writes them; any other call is one delta when its region closes.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlx_router.text.markers import find_first, partial_suffix

__all__ = ["CallDelta", "ParsedCall", "ToolCallStream", "ToolFormat", "new_call_id", "parse_tool_calls"]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ParsedCall:
    """One tool call read from model output; ``arguments`` is a JSON object as a string."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id)

    @classmethod
    def make(cls, name: object, arguments: object, call_id: object = None) -> ParsedCall:
        """A call from a decoded name and arguments (an object, or a string holding one).
        Raises ValueError for anything that is not a name and a JSON object."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a tool call needs a function name")
        if arguments is None:
            arguments = {}
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        if not isinstance(arguments, dict):
            raise TypeError("tool call arguments must be a JSON object")
        text = json.dumps(arguments, ensure_ascii=False)
        if isinstance(call_id, str) and call_id:
            return cls(name.strip(), text, call_id)
        return cls(name.strip(), text)


@dataclass(frozen=True, slots=True)
class CallDelta:
    """A piece of a call as it is written: the first piece of a call names the function
    (``name``), the pieces of one call share its ``id``, and their ``arguments`` joined are the
    call's arguments as JSON text."""

    id: str
    name: str | None
    arguments: str


class ToolFormat:
    """One model family's way of writing tool calls. Subclasses set the markers and ``parse``."""

    name: ClassVar[str]
    starts: ClassVar[tuple[str, ...]] = ()
    """Markers that open a call region (the marker is not part of the region's body)."""
    end: ClassVar[str | None] = None
    """Marker that closes a region; None: the region runs to the end of the output."""
    leading: ClassVar[tuple[str, ...]] = ()
    """Text that opens a region when the answer starts with it (after whitespace), kept in the
    body: e.g. ``{`` for formats that answer with a bare JSON call."""
    description: ClassVar[str] = ""

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        self.tools = tools or []

    def parse(self, body: str) -> list[ParsedCall]:
        """The calls in one region's body; raises ValueError when it is not a valid call."""
        raise NotImplementedError

    def arguments_start(self, body: str) -> tuple[str, int] | None:
        """The function name and where its JSON-object arguments start in the body of a region
        still being written, once both are known; None when this format (or this body) cannot
        say before the region closes. Only the first call of a region streams."""
        return None

    def unfinished(self, body: str) -> bool:
        """Whether a body that does not parse stops inside a value, so that the end marker just
        seen was part of that value (a string argument that mentions the marker)."""
        return False

    def properties(self, function: str) -> dict[str, Any]:
        """The JSON-schema properties of a tool's parameters (typed formats convert values)."""
        for tool in self.tools:
            spec = tool.get("function") or {}
            if spec.get("name") == function:
                return (spec.get("parameters") or {}).get("properties") or {}
        return {}


class ToolCallStream:
    """Feed answer text in pieces; get ``(content, calls)`` pieces back."""

    def __init__(self, fmt: ToolFormat, *, stream_arguments: bool = False) -> None:
        self.fmt = fmt
        self.stream_arguments = stream_arguments
        self._deltas: list[CallDelta] = []
        self._live: _LiveCall | None = None
        """The call of the open region whose arguments are being passed on."""
        self._buffer = ""
        self._region: str | None = None
        """Body of the open region (None outside one)."""
        self._opener = ""
        self._at_start = bool(fmt.leading)
        """Nothing but whitespace has been seen yet (only formats with leading openers)."""
        self.calls = 0
        self._whitespace = ""

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        self._buffer += text
        content: list[str] = []
        calls: list[ParsedCall] = []
        while self._buffer:
            if self._region is not None:
                if not self._in_region(content, calls):
                    break
            elif not self._outside(content):
                break
        return self._shown("".join(content)), calls

    def _shown(self, text: str) -> str:
        """Trailing whitespace is held until other text follows, so that whitespace around
        calls (the newlines between ``</tool_call>`` and ``<tool_call>``) is never shown."""
        text = self._whitespace + text
        shown = text.rstrip()
        self._whitespace = text[len(shown) :]
        return shown

    def take_deltas(self) -> list[CallDelta]:
        """The call pieces written since the last take, in order (``stream_arguments`` only)."""
        deltas, self._deltas = self._deltas, []
        return deltas

    @property
    def in_call(self) -> bool:
        """Inside a call region that has not closed (what is held is unfinished call markup)."""
        return self._region is not None

    def flush(self) -> tuple[str, list[ParsedCall]]:
        """The end of the output: an open region is read as it is (a format without an end
        marker ends here); what cannot be read is content."""
        content = ""
        calls: list[ParsedCall] = []
        if self._region is not None:
            body = self._region + self._buffer
            parsed = self._parse(body)
            if parsed is None and self._live is not None:  # cut short: the call stands as written
                parsed = [ParsedCall(self._live.name, "")]
            if parsed is None:
                content = self._opener + body
            else:
                calls = self._closed(body, parsed)
        else:
            content = self._buffer
        self._buffer, self._region = "", None
        self.calls += len(calls)
        shown = self._shown(content)
        if not self.calls:  # whitespace at the end of a plain answer is the model's
            shown, self._whitespace = shown + self._whitespace, ""
        return shown, calls

    def _outside(self, content: list[str]) -> bool:
        """Move text before the next opener to content. False when more text is needed."""
        fmt = self.fmt
        if self._at_start:
            lead = self._buffer.lstrip()
            if not lead:
                return False
            opener = next((o for o in fmt.leading if lead.startswith(o)), None)
            if opener is None and any(o.startswith(lead) for o in fmt.leading):
                return False  # e.g. "[" could still become "[{"
            self._at_start = False
            if opener is not None:  # the opener stays in the body
                self._buffer = ""
                self._region, self._opener = lead, ""
                return True
        index, marker = find_first(self._buffer, fmt.starts)
        if marker is None:
            keep = partial_suffix(self._buffer, fmt.starts)
            content.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return False
        content.append(self._buffer[:index])
        self._buffer = self._buffer[index + len(marker) :]
        self._region, self._opener = "", marker
        return True

    def _in_region(self, content: list[str], calls: list[ParsedCall]) -> bool:
        """Extend the open region; close it at the end marker. False when more text is needed."""
        end = self.fmt.end
        assert self._region is not None
        if end is None:
            self._region += self._buffer
            self._buffer = ""
            self._follow(self._region)
            return False
        index = self._buffer.find(end)
        if index < 0:
            keep = partial_suffix(self._buffer, (end,))
            self._region += self._buffer[: len(self._buffer) - keep]
            self._buffer = self._buffer[len(self._buffer) - keep :]
            self._follow(self._region)
            return False
        body = self._region + self._buffer[:index]
        self._buffer = self._buffer[index + len(end) :]
        parsed = self._parse(body)
        if parsed is None and self.fmt.unfinished(body):
            self._region = body + end  # the marker was inside a value: the region goes on
            return True
        if parsed is None and self._live is not None:  # already streamed: the call stands as written
            parsed = [ParsedCall(self._live.name, "")]
        if parsed is None:
            content.append(self._opener + body + end)
        else:
            calls.extend(self._closed(body, parsed))
            self.calls += len(parsed)
        self._region = None
        return True

    def _follow(self, body: str) -> None:
        """Pass on what the open region's first call has added to its arguments."""
        if not self.stream_arguments:
            return
        if self._live is None:
            found = self.fmt.arguments_start(body)
            if found is None:
                return
            self._live = _LiveCall(new_call_id(), found[0], found[1])
            self._deltas.append(CallDelta(self._live.id, self._live.name, ""))
        piece = self._live.advance(body)
        if piece:
            self._deltas.append(CallDelta(self._live.id, None, piece))

    def _closed(self, body: str, parsed: list[ParsedCall]) -> list[ParsedCall]:
        """A region's calls once it is closed: a streamed first call keeps its id and the
        arguments as streamed (whatever ``parsed`` read); the others are one delta each."""
        self._follow(body)
        live, self._live = self._live, None
        if live is not None:
            parsed = [ParsedCall(live.name, live.written, live.id), *parsed[1:]]
        if self.stream_arguments:
            self._deltas.extend(CallDelta(c.id, c.name, c.arguments) for c in parsed[1 if live is not None else 0 :])
        return parsed

    def _parse(self, body: str) -> list[ParsedCall] | None:
        try:
            calls = self.fmt.parse(body)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, SyntaxError, RecursionError):
            return None
        return calls or None


class _LiveCall:
    """A call whose arguments are passed on as they are written: the JSON object from
    ``start`` is scanned (strings and escapes followed) up to the brace that closes it."""

    def __init__(self, call_id: str, name: str, start: int) -> None:
        self.id, self.name = call_id, name
        self._pos = start
        self._depth = 0
        self._in_string = self._escaped = self.done = False
        self.written = ""

    def advance(self, body: str) -> str:
        """The arguments text that ``body`` (the region so far, only ever extended) adds."""
        start = self._pos
        while not self.done and self._pos < len(body):
            ch = body[self._pos]
            self._pos += 1
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                self.done = self._depth <= 0
        piece = body[start : self._pos]
        self.written += piece
        return piece


def parse_tool_calls(fmt: ToolFormat, text: str) -> tuple[str, list[ParsedCall]]:
    """``(content, calls)`` of a complete answer."""
    stream = ToolCallStream(fmt)
    content, calls = stream.feed(text)
    more_content, more_calls = stream.flush()
    return content + more_content, calls + more_calls
