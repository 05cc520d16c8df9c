"""The shape every tool-call format shares, and the stream that applies one to model output.

A format says where a call region starts (a marker such as ``<tool_call>``, or JSON at the very
start of the answer), where it ends (a marker, or the end of the output), and how to read the
calls inside it. :class:`ToolCallStream` does the rest for every format alike: text outside
regions is content, text that may still become a marker is held back (so no half-written markup
ever reaches a client), a region becomes calls once it is closed, and a region that cannot be
read is given back as content, unchanged, never raising.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlx_router.text.markers import find_first, partial_suffix

__all__ = ["ParsedCall", "ToolCallStream", "ToolFormat", "new_call_id", "parse_tool_calls"]


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

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt = fmt
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
            if parsed is None:
                content = self._opener + body
            else:
                calls = parsed
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
            return False
        index = self._buffer.find(end)
        if index < 0:
            keep = partial_suffix(self._buffer, (end,))
            self._region += self._buffer[: len(self._buffer) - keep]
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return False
        body = self._region + self._buffer[:index]
        self._buffer = self._buffer[index + len(end) :]
        parsed = self._parse(body)
        if parsed is None and self.fmt.unfinished(body):
            self._region = body + end  # the marker was inside a value: the region goes on
            return True
        if parsed is None:
            content.append(self._opener + body + end)
        else:
            calls.extend(parsed)
            self.calls += len(parsed)
        self._region = None
        return True

    def _parse(self, body: str) -> list[ParsedCall] | None:
        try:
            calls = self.fmt.parse(body)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, SyntaxError, RecursionError):
            return None
        return calls or None


def parse_tool_calls(fmt: ToolFormat, text: str) -> tuple[str, list[ParsedCall]]:
    """``(content, calls)`` of a complete answer."""
    stream = ToolCallStream(fmt)
    content, calls = stream.feed(text)
    more_content, more_calls = stream.flush()
    return content + more_content, calls + more_calls
