"""Separating reasoning (``<think>…</think>``) from the answer, incrementally.

Works on streamed text: a tag split across chunks is held back until it is known whether it
is a tag. Models whose chat template opens the think block in the prompt (Qwen3 thinking,
DeepSeek-R1) start *inside* reasoning; the worker reports that with the admission.
"""

from __future__ import annotations

__all__ = ["ReasoningSplitter"]


class ReasoningSplitter:
    """Feed text pieces, get ``(reasoning, content)`` pieces back."""

    def __init__(self, *, start: str = "<think>", end: str = "</think>", inside: bool = False) -> None:
        self.start = start
        self.end = end
        self.inside = inside
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._buffer += text
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            tag = self.end if self.inside else self.start
            index = self._buffer.find(tag)
            if index >= 0:
                (reasoning if self.inside else content).append(self._buffer[:index])
                self._buffer = self._buffer[index + len(tag) :]
                self.inside = not self.inside
                continue
            keep = _partial_suffix(self._buffer, tag)
            emit, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep :]
            (reasoning if self.inside else content).append(emit)
            return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is left at the end of the sequence (an unfinished tag is plain text)."""
        rest, self._buffer = self._buffer, ""
        return (rest, "") if self.inside else ("", rest)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
