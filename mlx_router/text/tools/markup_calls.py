"""Formats whose arguments are written as markup, one value at a time: Qwen3-Coder XML, GLM,
Gemma (``call:name{…}``) and pythonic calls (Llama 4, Llama 3.2 pythonic, many small models).

Values arrive as text; they are typed with the tool's JSON schema (a ``string`` parameter stays
text, anything else is read as JSON, then as a Python literal, else kept as text).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from mlx_router.text.tools.base import ParsedCall, ToolFormat

__all__ = ["FunctionGemmaFormat", "GemmaFormat", "GlmFormat", "PythonicFormat", "Qwen3CoderFormat"]


def _schema_types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a schema allows (from ``type``, ``enum``/``const`` values and ``anyOf``/``oneOf``)."""
    kind = schema.get("type")
    types = set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()
    enum = schema.get("enum")
    values: list[Any] = enum if isinstance(enum, list) else [schema["const"]] if "const" in schema else []
    types |= {"string" if isinstance(v, str) else "null" if v is None else "other" for v in values}
    for branch in (schema.get("anyOf") or []) + (schema.get("oneOf") or []):
        if isinstance(branch, dict):
            types |= _schema_types(branch)
    return types


def typed_value(text: str, schema: dict[str, Any] | None) -> Any:
    """A parameter value from its text, typed by its JSON schema: a parameter that can only be a
    string (or null) stays text; others are read as JSON, then as a Python literal, else text."""
    types = _schema_types(schema or {})
    if types and types <= {"string", "null"} and "string" in types:
        return None if text == "null" and "null" in types else text
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = ast.literal_eval(text)
        json.dumps(value)  # sets, bytes and complex numbers are not JSON: keep the text
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text
    return value


_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)
"""A parameter ends at ``</parameter>``, or, when the model left that out (as Qwen's own parser
tolerates), at the next parameter or the end of the function."""


class Qwen3CoderFormat(ToolFormat):
    """Qwen3-Coder: ``<tool_call><function=NAME><parameter=KEY>VALUE</parameter>…</function>
    </tool_call>`` (several functions in one region are several calls)."""

    name = "qwen3_coder"
    starts = ("<tool_call>",)
    end = "</tool_call>"

    def parse(self, body: str) -> list[ParsedCall]:
        calls, pos = [], 0
        while pos < len(body.rstrip()):
            match = _FUNCTION.match(body, pos)
            if match is None:
                raise ValueError("expected <function=…>…</function>")
            calls.append(self._call(match.group(1).strip(), match.group(2)))
            pos = match.end()
        return calls

    def _call(self, name: str, inner: str) -> ParsedCall:
        properties = self.properties(name)
        arguments = {key.strip(): typed_value(value, properties.get(key.strip())) for key, value in _PARAMETER.findall(inner)}
        if _PARAMETER.sub("", inner).strip():
            raise ValueError("text between parameters")
        return ParsedCall.make(name, arguments)


_GLM_ARG = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


class GlmFormat(ToolFormat):
    """GLM-4.5 / 4.6 / 4.7: ``<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>…
    </tool_call>``."""

    name = "glm"
    starts = ("<tool_call>",)
    end = "</tool_call>"

    def parse(self, body: str) -> list[ParsedCall]:
        name, _, rest = body.partition("<arg_key>")
        name = name.strip()
        if not name or "<" in name or "\n" in name:
            raise ValueError("expected a function name")
        rest = "<arg_key>" + rest if _ else ""
        properties = self.properties(name)
        arguments, pos = {}, 0
        while pos < len(rest.rstrip()):
            match = _GLM_ARG.match(rest, pos)
            if match is None:
                raise ValueError("expected <arg_key>…</arg_key><arg_value>…</arg_value>")
            key = match.group(1).strip()
            arguments[key] = typed_value(match.group(2), properties.get(key))
            pos = match.end()
        return [ParsedCall.make(name, arguments)]


def _gemma_arguments(text: str, quote: str) -> dict[str, Any]:
    """``{key:value,…}`` where strings are wrapped in ``quote`` and keys are bare words, as JSON."""
    pieces: list[str] = []
    pos = 0
    while True:
        start = text.find(quote, pos)
        if start < 0:
            pieces.append(_quote_keys(text[pos:]))
            break
        stop = text.find(quote, start + len(quote))
        if stop < 0:
            raise ValueError("unterminated string")
        pieces.append(_quote_keys(text[pos:start]))
        pieces.append(json.dumps(text[start + len(quote) : stop]))
        pos = stop + len(quote)
    value = json.loads("".join(pieces))
    if not isinstance(value, dict):
        raise TypeError("arguments must be an object")
    return value


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BARE_KEY = re.compile(r"(?<=[{,])\s*([A-Za-z_][\w-]*)\s*:")


def _quote_keys(text: str) -> str:
    """Bare keys quoted, leaving alone any ordinary JSON string a model wrote instead of the
    format's own quotes (its text may hold ``,word:``)."""
    out, pos = [], 0
    for string in _JSON_STRING.finditer(text):
        out.append(_BARE_KEY.sub(r'"\1":', text[pos : string.start()]))
        out.append(string.group(0))
        pos = string.end()
    out.append(_BARE_KEY.sub(r'"\1":', text[pos:]))
    return "".join(out)


_GEMMA_CALL = re.compile(r"^\s*call:([\w.-]+)(\{.*\})\s*$", re.DOTALL)


class GemmaFormat(ToolFormat):
    """Gemma 4: ``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:1}<tool_call|>``."""

    name = "gemma"
    starts = ("<|tool_call>",)
    end = "<tool_call|>"
    quote = '<|"|>'

    def parse(self, body: str) -> list[ParsedCall]:
        match = _GEMMA_CALL.match(body)
        if match is None:
            raise ValueError("expected call:NAME{…}")
        return [ParsedCall.make(match.group(1), _gemma_arguments(match.group(2), self.quote))]


class FunctionGemmaFormat(GemmaFormat):
    """FunctionGemma: ``<start_function_call>call:NAME{key:<escape>text<escape>}<end_function_call>``."""

    name = "function_gemma"
    starts = ("<start_function_call>",)
    end = "<end_function_call>"
    quote = "<escape>"


class PythonicFormat(ToolFormat):
    """Pythonic calls, as Llama 4 and Llama 3.2 (pythonic template) write them:
    ``[get_weather(city="Paris"), get_time()]``, optionally in ``<|python_start|>…<|python_end|>``."""

    name = "pythonic"
    starts = ("<|python_start|>",)
    leading = ("[",)

    def parse(self, body: str) -> list[ParsedCall]:
        body = body.replace("<|python_end|>", "").strip()
        tree = ast.parse(body, mode="eval").body
        items = tree.elts if isinstance(tree, ast.List) else [tree]
        calls = []
        for item in items:
            if not isinstance(item, ast.Call) or item.args:
                raise ValueError("expected name(key=value, …)")
            name = ast.unparse(item.func)
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
                raise ValueError("a call's name is a (dotted) name")
            arguments = {kw.arg: _literal(kw.value) for kw in item.keywords if kw.arg}
            if len(arguments) != len(item.keywords):
                raise ValueError("**kwargs are not arguments")
            calls.append(ParsedCall.make(name, arguments))
        return calls


_JSON_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _literal(node: ast.expr) -> Any:
    """A Python literal, also where a model wrote JSON's ``true``/``false``/``null`` inside it
    (``f(flag=true, tags=[null])``): those names are values, any other name is not."""
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        keys = [key for key in node.keys if key is not None]
        if len(keys) < len(node.keys):
            raise ValueError("**mapping is not a value")
        return {_literal(key): _literal(value) for key, value in zip(keys, node.values)}
    return ast.literal_eval(node)
