"""Formats whose calls are JSON objects: Hermes/Qwen ``<tool_call>``, Llama 3.x, Mistral,
DeepSeek and gpt-oss (harmony).

Shared reading: a body holds one or more JSON values (objects, or arrays of objects, possibly
separated by ``;``, ``,`` or whitespace); each object names the function (``name``) and its
arguments (``arguments`` or ``parameters``, an object or a JSON string holding one).
"""

from __future__ import annotations

import json
import re
from typing import Any

from mlx_router.text.tools.base import ParsedCall, ToolFormat

__all__ = ["DeepSeekFormat", "HarmonyFormat", "HermesFormat", "Llama3JsonFormat", "MistralFormat", "json_values"]

_DECODER = json.JSONDecoder()


def json_values(text: str, separators: str = " \t\r\n;,") -> list[Any]:
    """Every JSON value in ``text``, allowing only separators between them."""
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in separators:
            pos += 1
        if pos >= len(text):
            return values
        value, pos = _DECODER.raw_decode(text, pos)
        values.append(value)


_NAMED_OBJECT = re.compile(r'\s*\[?\s*\{\s*"name"\s*:\s*"([^"\\]+)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


def named_object_start(body: str) -> tuple[str, int] | None:
    """``{"name": "f", "arguments": {`` (or ``parameters``, or the first of an array): the name
    and where the arguments object starts, once the model has written that far."""
    match = _NAMED_OBJECT.match(body)
    return (match.group(1), match.end()) if match is not None else None


def calls_from_objects(values: list[Any]) -> list[ParsedCall]:
    """Calls from decoded JSON: objects with a name and arguments, or arrays of them."""
    calls = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                raise TypeError("a tool call must be a JSON object")
            if isinstance(item.get("function"), dict):  # OpenAI-shaped {"type", "function": {...}}
                item = {**item["function"], "id": item.get("id")}
            arguments = item["arguments"] if "arguments" in item else item.get("parameters")
            calls.append(ParsedCall.make(item.get("name"), arguments, item.get("id")))
    return calls


class HermesFormat(ToolFormat):
    """Hermes, Qwen2.5, Qwen3, SmolLM3 and most ChatML tool templates:
    ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``, repeated for parallel calls."""

    name = "hermes"
    starts = ("<tool_call>",)
    end = "</tool_call>"

    def parse(self, body: str) -> list[ParsedCall]:
        return calls_from_objects(json_values(body))

    def arguments_start(self, body: str) -> tuple[str, int] | None:
        return named_object_start(body)

    def unfinished(self, body: str) -> bool:
        try:
            json_values(body)
        except json.JSONDecodeError as exc:
            return exc.msg.startswith("Unterminated string")
        except ValueError:
            return False
        return False


class Llama3JsonFormat(ToolFormat):
    """Llama 3.1 / 3.2 / 3.3 JSON tool calling: the answer is ``{"name": …, "parameters": {…}}``
    (several separated by ``;``), optionally after ``<|python_tag|>``. An answer that opens with
    ``{`` is held until it is known to be a call or not."""

    name = "llama3_json"
    starts = ("<|python_tag|>",)
    leading = ("{",)

    def parse(self, body: str) -> list[ParsedCall]:
        body = body.replace("<|python_tag|>", ";").removesuffix("<|eom_id|>")
        return calls_from_objects(json_values(body))

    def arguments_start(self, body: str) -> tuple[str, int] | None:
        return named_object_start(body)


_MISTRAL_HEADER = re.compile(r"\s*([\w.-]+)\s*(?:\[CALL_ID\]\s*([\w-]+)\s*)?\[ARGS\]")


class MistralFormat(ToolFormat):
    """Mistral: ``[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`` (v3 tokenizers) or
    ``[TOOL_CALLS]name[ARGS]{…}`` repeated (v11 and later, optionally with ``[CALL_ID]``)."""

    name = "mistral"
    starts = ("[TOOL_CALLS]",)

    def arguments_start(self, body: str) -> tuple[str, int] | None:
        match = _MISTRAL_HEADER.match(body)
        if match is None:
            return named_object_start(body)
        start = len(body) - len(body[match.end() :].lstrip())
        return (match.group(1), start) if body[start : start + 1] == "{" else None

    def parse(self, body: str) -> list[ParsedCall]:
        calls: list[ParsedCall] = []
        for part in body.split("[TOOL_CALLS]"):
            if not part.strip():
                continue
            if _MISTRAL_HEADER.match(part) is None:
                calls.extend(calls_from_objects(json_values(part)))
                continue
            pos = 0
            while pos < len(part.rstrip()):
                match = _MISTRAL_HEADER.match(part, pos)
                if match is None:
                    raise ValueError("expected name[ARGS]{…}")
                arguments, pos = _DECODER.raw_decode(part, match.end())
                calls.append(ParsedCall.make(match.group(1), arguments, match.group(2)))
        return calls


_DS_CALL_BEGIN, _DS_CALL_END, _DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_DS_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class DeepSeekFormat(ToolFormat):
    """DeepSeek V3 / R1 (``function<｜tool▁sep｜>name`` then a fenced JSON block) and V3.1+
    (``name<｜tool▁sep｜>{…}``), inside ``<｜tool▁calls▁begin｜>…<｜tool▁calls▁end｜>``."""

    name = "deepseek"
    starts = ("<｜tool▁calls▁begin｜>",)
    end = "<｜tool▁calls▁end｜>"

    def parse(self, body: str) -> list[ParsedCall]:
        calls = []
        for part in body.split(_DS_CALL_BEGIN)[1:]:
            part = part.split(_DS_CALL_END)[0]
            head, sep, rest = part.partition(_DS_SEP)
            if not sep:
                raise ValueError("missing tool separator")
            if head.strip() == "function":  # V3 / R1: name on the first line, fenced JSON after
                name, _, rest = rest.partition("\n")
            else:
                name = head
            fenced = _DS_FENCE.match(rest)
            arguments = json.loads(fenced.group(1) if fenced else rest)
            calls.append(ParsedCall.make(name, arguments))
        if body.split(_DS_CALL_BEGIN)[0].strip():
            raise ValueError("text before the first call")
        return calls


class HarmonyFormat(ToolFormat):
    """gpt-oss: a ``commentary`` message addressed ``to=functions.NAME`` whose body is the JSON
    arguments, ended by ``<|call|>``. The harmony reasoning splitter, which removes all other
    markup, hands such messages on as ``<|start|>to=functions.NAME<|message|>ARGS<|call|>``."""

    name = "harmony"
    starts = ("<|start|>to=functions.",)
    end = "<|call|>"

    def parse(self, body: str) -> list[ParsedCall]:
        name, sep, arguments = body.partition("<|message|>")
        if not sep:
            raise ValueError("missing message body")
        return [ParsedCall.make(name.strip(), json.loads(arguments) if arguments.strip() else {})]

    def arguments_start(self, body: str) -> tuple[str, int] | None:
        name, sep, arguments = body.partition("<|message|>")
        start = len(body) - len(arguments.lstrip())
        return (name.strip(), start) if sep and name.strip() and body[start : start + 1] == "{" else None
