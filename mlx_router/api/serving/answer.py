"""Reading one choice's answer text: reasoning apart, then tool calls out of the rest.

Any endpoint that returns model text (chat completions, and the Messages and Responses APIs)
reads it the same way, piece by piece as it streams or once for a whole answer:

    reader = AnswerReader.for_admission(admission, reasoning_response=..., tools=..., constrained=...)
    piece = reader.feed(chunk.text, final=chunk.finish_reason is not None)
    piece.reasoning, piece.content, piece.calls

Text goes through the reasoning splitter first (when the model's ``reasoning_response`` is set,
and always for harmony output, whose channel markup must never reach a client), and only its
content part through the tool-call reader, so markup inside a think block is never a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlx_router.engine.types import Admission
from mlx_router.text.reasoning import HarmonySplitter, ReasoningSplitter, make_splitter
from mlx_router.text.tools import CallDelta, ParsedCall, ToolCallStream, make_format

__all__ = ["AnswerPiece", "AnswerReader"]

Splitter = ReasoningSplitter | HarmonySplitter


@dataclass(frozen=True)
class AnswerPiece:
    reasoning: str | None
    """Reasoning to show (None when there is none, or the model's reasoning is dropped)."""
    content: str
    calls: list[ParsedCall] = field(default_factory=list)
    """Complete tool calls, in order."""
    deltas: list[CallDelta] = field(default_factory=list)
    """The calls as they are written (readers made with ``stream_arguments`` only)."""


class AnswerReader:
    """One choice's answer, read as it comes (see the module docstring)."""

    def __init__(self, splitter: Splitter | None, tools: ToolCallStream | None, *, show_reasoning: bool) -> None:
        self.splitter = splitter
        self.tools = tools
        self.show_reasoning = show_reasoning

    @classmethod
    def for_admission(
        cls,
        admission: Admission,
        *,
        reasoning_response: Literal["enable", "disable"] | None,
        tools: Sequence[dict[str, Any]] = (),
        constrained: bool = False,
        stream_arguments: bool = False,
    ) -> AnswerReader:
        """The reader of a sequence as the worker admitted it. ``tools``: those offered (OpenAI
        shape); ``constrained``: the sequence follows a grammar, so it writes the answer at
        once, even where the prompt opened a think block; ``stream_arguments``: also report
        calls as :class:`~mlx_router.text.tools.CallDelta` pieces while they are written."""
        splitter = None
        if reasoning_response is not None or admission.reasoning_format == "harmony":
            splitter = make_splitter(
                admission.reasoning_format,
                inside=admission.reasoning_open and not constrained,
                tool_frames=admission.tool_format == "harmony",
            )
        reader = None
        if tools and admission.tool_format is not None:
            reader = ToolCallStream(make_format(admission.tool_format, list(tools)), stream_arguments=stream_arguments)
        return cls(splitter, reader, show_reasoning=reasoning_response == "enable")

    def feed(self, text: str, *, final: bool) -> AnswerPiece:
        """What a piece of answer text adds; the last piece (``final``) also flushes what the
        readers held back."""
        reasoning, content = "", text
        if self.splitter is not None:
            reasoning, content = self.splitter.feed(text)
            if final:
                more_reasoning, more_content = self.splitter.flush()
                reasoning, content = reasoning + more_reasoning, content + more_content
        calls: list[ParsedCall] = []
        deltas: list[CallDelta] = []
        if self.tools is not None:
            content, calls = self._read_calls(content, final=final)
            deltas = self.tools.take_deltas()
        return AnswerPiece(reasoning if reasoning and self.show_reasoning else None, content, calls, deltas)

    def _read_calls(self, text: str, *, final: bool) -> tuple[str, list[ParsedCall]]:
        """At the end, a call that a length limit cut off after complete calls is dropped: its
        markup is no answer, and the calls stand."""
        assert self.tools is not None
        content, calls = self.tools.feed(text)
        if final:
            cut = self.tools.in_call and bool(self.tools.calls)
            more_content, more_calls = self.tools.flush()
            content, calls = content + ("" if cut and not more_calls else more_content), calls + more_calls
        return content, calls
