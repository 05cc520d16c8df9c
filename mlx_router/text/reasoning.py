"""Separating reasoning from the answer, incrementally.

Two output formats are understood:

* ``think``: reasoning between ``<think>`` and ``</think>`` (Qwen3, DeepSeek-R1, ...). Models
  whose chat template opens the think block in the prompt (Qwen3 thinking, DeepSeek-R1) start
  *inside* reasoning; the worker reports that with the admission.
* ``harmony``: gpt-oss messages, ``<|channel|>analysis<|message|>…<|end|>`` then
  ``<|start|>assistant<|channel|>final<|message|>…<|return|>``.

Both work on streamed text: a tag split across chunks is held back until it is known whether it
is a tag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from mlx_router.text.markers import find_first, partial_suffix

__all__ = ["HarmonySplitter", "ReasoningFormat", "ReasoningSplitter", "detect_reasoning_format", "make_splitter"]

ReasoningFormat = Literal["think", "harmony"]


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
            keep = partial_suffix(self._buffer, (tag,))
            emit, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep :]
            (reasoning if self.inside else content).append(emit)
            return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is left at the end of the sequence (an unfinished tag is plain text)."""
        rest, self._buffer = self._buffer, ""
        return (rest, "") if self.inside else ("", rest)


# Harmony control tokens, as text (the detokenizer writes special tokens out).
_START, _CHANNEL, _MESSAGE, _CONSTRAIN = "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>"
_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_TOKENS = (_START, _CHANNEL, _MESSAGE, _CONSTRAIN, *_ENDS)
_RECIPIENT = re.compile(r"(?:^|\s)to=\S")
_FUNCTION = re.compile(r"(?:^|\s)to=functions\.([^\s<]+)")

# States of HarmonySplitter.
_FIRST = "first"  # nothing decided yet: the prompt ended with "<|start|>assistant"
_HEADER = "header"  # inside a message header (role, recipient, channel), up to <|message|>
_BODY = "body"  # inside a message body, up to <|end|> / <|return|> / <|call|>
_OUTSIDE = "outside"  # between messages: stray text here is content


class HarmonySplitter:
    """Feed gpt-oss (harmony) text pieces, get ``(reasoning, content)`` pieces back.

    A message is ``[<|start|>ROLE] [to=RECIPIENT] <|channel|>CHANNEL [TYPE] [<|constrain|>FMT]
    <|message|>BODY <|end|>|<|return|>|<|call|>``. Bodies on the ``analysis`` channel, and on
    ``commentary`` when not addressed to a tool (no ``to=``), are reasoning; ``final`` bodies
    are content, and so are bodies of a message with no or an unknown channel. Text outside any
    message is content. All markup (tokens and headers) is removed, except that with
    ``tool_frames`` a message addressed to a function (``to=functions.NAME``) is handed on as
    ``<|start|>to=functions.NAME<|message|>ARGS<|call|>`` for the harmony tool-call parser;
    without it such a body is plain content (its arguments are not lost).

    The generation prompt ends with ``<|start|>assistant``, so the output normally starts with
    ``<|channel|>``, but the model may also start with the header's `` to=…`` part: leading text
    that can still become ``to=…`` is held back until that is known.
    """

    def __init__(self, *, tool_frames: bool = False) -> None:
        self._buffer = ""
        self._state = _FIRST
        self._header = ""
        self._reasoning_body = False  # where the current body goes
        self.tool_frames = tool_frames
        self._tool_body = False

    def feed(self, text: str) -> tuple[str, str]:
        self._buffer += text
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            if self._state == _FIRST and not self._leave_first():
                break
            index, token = find_first(self._buffer, _TOKENS)
            if token is None:
                keep = partial_suffix(self._buffer, _TOKENS)
                self._take(self._buffer[: len(self._buffer) - keep], reasoning, content)
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            self._take(self._buffer[:index], reasoning, content)
            self._buffer = self._buffer[index + len(token) :]
            content.append(self._on_token(token))
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is left at the end of the sequence: an unfinished token is plain text where
        text would go; an unfinished header is markup and is dropped."""
        rest, self._buffer = self._buffer, ""
        if self._state == _HEADER:
            return "", ""
        if self._state == _BODY and self._reasoning_body:
            return rest, ""
        return "", rest

    def _leave_first(self) -> bool:
        """In the first state, decide whether the output opens with a header (``to=…`` or a
        token, whitespace before it dropped) or with plain text. False while that is unknown."""
        index, token = find_first(self._buffer, _TOKENS)
        lead = (self._buffer if token is None else self._buffer[:index]).lstrip()
        if lead.startswith("to="):
            self._state, self._header = _HEADER, ""
        elif token is None and any(prefix.startswith(lead) for prefix in ("to=", *_TOKENS)):
            return False  # e.g. "", " ", "to", "<|chan": may still become "to=…" or a token
        else:
            if not lead:  # whitespace before the first token is not content
                self._buffer = self._buffer[index:]
            self._state = _OUTSIDE
        return True

    def _take(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if self._state == _HEADER:
            self._header += text
        elif self._state == _BODY and self._reasoning_body:
            reasoning.append(text)
        else:
            content.append(text)

    def _on_token(self, token: str) -> str:
        """Follow a harmony token; returns the markup handed on as content (tool frames)."""
        frame = ""
        if token == _START:
            self._state, self._header = _HEADER, ""
        elif token == _CHANNEL:
            if self._state != _HEADER:  # a message that starts at its channel
                self._state, self._header = _HEADER, ""
            self._header += token
        elif token == _CONSTRAIN:
            if self._state == _HEADER:
                self._header += " "
        elif token == _MESSAGE:
            if self._state == _HEADER:
                self._reasoning_body = _is_reasoning(self._header)
                function = _FUNCTION.search(self._header) if self.tool_frames else None
                if function is not None:
                    frame, self._tool_body = f"<|start|>to=functions.{function.group(1)}<|message|>", True
            elif self._state != _BODY:
                self._reasoning_body = False
            self._state, self._header = _BODY, ""
        else:  # an end token
            if self._tool_body:
                frame, self._tool_body = "<|call|>", False
            self._state, self._header = _OUTSIDE, ""
        return frame


def _is_reasoning(header: str) -> bool:
    """Whether a message with this header (text between its start and <|message|>) is reasoning."""
    if _CHANNEL not in header:
        return False
    words = header.split(_CHANNEL, 1)[1].split()
    channel = words[0] if words else ""
    return channel == "analysis" or (channel == "commentary" and not _RECIPIENT.search(header))


def make_splitter(kind: str, *, inside: bool = False, tool_frames: bool = False) -> ReasoningSplitter | HarmonySplitter:
    """A splitter for a reasoning format (see ``detect_reasoning_format``). ``inside`` says the
    prompt opened a ``<think>`` block; harmony prompts never open a message body.
    ``tool_frames``: hand harmony tool calls on for the tool-call parser."""
    if kind == "think":
        return ReasoningSplitter(inside=inside)
    if kind == "harmony":
        return HarmonySplitter(tool_frames=tool_frames)
    raise ValueError(f"unknown reasoning format {kind!r}; known: harmony, think")


def detect_reasoning_format(chat_template: str | Mapping[str, str] | None) -> ReasoningFormat:
    """``harmony`` when the chat template writes harmony channels (gpt-oss), else ``think``.

    A tokenizer may hold several named templates (a mapping); any of them counts.
    """
    if isinstance(chat_template, Mapping):
        chat_template = "\n".join(str(source) for source in chat_template.values())
    return "harmony" if chat_template and _CHANNEL in chat_template else "think"
