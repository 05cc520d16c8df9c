"""Grammars for constrained decoding: JSON answers and forced tool calls.

Built as llguidance grammars (JSON schema, or Lark with embedded ``%json`` schemas); the worker
compiles each one once against its tokenizer and masks the logits of every constrained sequence
(``mlx_router.engine.constrain``). Pure text, no MLX: the router uses the same functions to
refuse a schema the grammar engine cannot honour before anything is loaded.

Forced tool calls are written in the model's own call syntax where that syntax is JSON-shaped
(Hermes, Llama 3, Mistral, DeepSeek, harmony). For formats that write arguments as markup
(Qwen3-Coder, GLM, Gemma, pythonic) the forced call uses the Hermes syntax, which these models'
templates also describe as JSON; the answer is then read with the Hermes parser.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from llguidance import LLMatcher

__all__ = [
    "FORCED_FORMATS",
    "JSON_STYLE",
    "forced_format",
    "json_grammar",
    "schema_depth",
    "tool_grammar",
    "validate_grammar",
]

JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
"""Compact, one-line JSON spaced like Python's ``json.dumps``: the form models saw most, and no
room for a small model to wander into endless whitespace."""

Literal = Callable[[str], str]
"""Lark for a marker: a quoted string, or a special token (``<[id]>``) when the marker is one."""


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _with_style(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with the server's JSON style, which a client's own ``x-guidance`` cannot undo."""
    return {**schema, "x-guidance": {**(schema.get("x-guidance") or {}), **JSON_STYLE}}


def json_grammar(schema: dict[str, Any]) -> str:
    """A grammar for one JSON value matching ``schema`` (``{"type": "object"}`` for json_object)."""
    return LLMatcher.grammar_from_json_schema(_with_style(schema))


def validate_grammar(grammar: str) -> str | None:
    """The grammar engine's complaint about a grammar (e.g. unsupported schema keys), or None."""
    error = LLMatcher.validate_grammar(grammar, None)
    return error or None


def schema_depth(value: Any) -> int:
    """Nesting depth of a JSON value (bounded requests keep grammar compilation bounded)."""
    depth, level = 0, [(value, 1)]
    while level:
        item, d = level.pop()
        depth = max(depth, d)
        if isinstance(item, dict):
            level.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            level.extend((v, d + 1) for v in item)
    return depth


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    parameters = tool.get("parameters")
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object"}


def _call_object(tool: dict[str, Any], arguments_key: str) -> str:
    schema = {
        "type": "object",
        "properties": {"name": {"const": tool["name"]}, arguments_key: _parameters(tool)},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }
    return "%json " + json.dumps(_with_style(schema), ensure_ascii=False)


def _arguments(tool: dict[str, Any]) -> str:
    return "%json " + json.dumps(_with_style(_parameters(tool)), ensure_ascii=False)


_NEWLINE = _quoted("\n")


def _repeat(item: str, separator: str, parallel: bool) -> str:
    """``item``, or with ``parallel`` one or more of it joined by ``separator``."""
    return f"{item} ({separator} {item})*" if parallel else item


# How each JSON-shaped format writes its calls: the ``call_i`` rules (one per tool) and the
# rules that arrange them (``calls`` and any helper rule).
Writer = Callable[[list[dict[str, Any]], Literal, bool], tuple[list[str], list[str]]]


def _hermes(tools: list[dict[str, Any]], lit: Literal, parallel: bool) -> tuple[list[str], list[str]]:
    return [_call_object(t, "arguments") for t in tools], [
        f"calls: {_repeat('one', _NEWLINE, parallel)}",
        f"one: {lit('<tool_call>')} {_NEWLINE} call {_NEWLINE} {lit('</tool_call>')}",
    ]


def _llama3(tools: list[dict[str, Any]], lit: Literal, parallel: bool) -> tuple[list[str], list[str]]:
    return [_call_object(t, "parameters") for t in tools], [f"calls: {_repeat('call', _quoted('; '), parallel)}"]


def _mistral(tools: list[dict[str, Any]], lit: Literal, parallel: bool) -> tuple[list[str], list[str]]:
    calls = _repeat("call", _quoted(", "), parallel)
    return [_call_object(t, "arguments") for t in tools], [f'calls: {lit("[TOOL_CALLS]")} "[" {calls} "]"']


def _deepseek(tools: list[dict[str, Any]], lit: Literal, parallel: bool) -> tuple[list[str], list[str]]:
    rules = [
        f'{lit("<｜tool▁call▁begin｜>")} {_quoted(t["name"])} {lit("<｜tool▁sep｜>")} {_arguments(t)} {lit("<｜tool▁call▁end｜>")}'
        for t in tools
    ]
    calls = "call+" if parallel else "call"
    return rules, [f'calls: {lit("<｜tool▁calls▁begin｜>")} {calls} {lit("<｜tool▁calls▁end｜>")}']


def _harmony(tools: list[dict[str, Any]], lit: Literal, parallel: bool) -> tuple[list[str], list[str]]:
    rules = [
        f'{lit("<|channel|>")} {_quoted("commentary to=functions." + t["name"] + " ")}{lit("<|constrain|>")} "json" '
        f'{lit("<|message|>")} {_arguments(t)} {lit("<|call|>")}'
        for t in tools
    ]
    return rules, ["calls: call+" if parallel else "calls: call"]


_WRITERS: dict[str, Writer] = {
    "hermes": _hermes,
    "llama3_json": _llama3,
    "mistral": _mistral,
    "deepseek": _deepseek,
    "harmony": _harmony,
}
FORCED_FORMATS = frozenset(_WRITERS)


def forced_format(format_name: str) -> str:
    """The format a forced call is written in for a model whose own format is ``format_name``."""
    return format_name if format_name in FORCED_FORMATS else "hermes"


def tool_grammar(
    format_name: str,
    tools: list[dict[str, Any]],
    *,
    parallel: bool,
    answer_schema: dict[str, Any] | None = None,
    literal: Literal = _quoted,
) -> str:
    """A Lark grammar for one call (or several when ``parallel``) of one of ``tools`` (each
    ``{"name", "parameters"}``), written in ``forced_format(format_name)``. With
    ``answer_schema`` the output may instead be a JSON answer matching it (``tool_choice: auto``
    with a ``response_format``)."""
    if not tools:
        raise ValueError("a tool grammar needs at least one tool")
    rules, lines = _WRITERS[forced_format(format_name)](tools, literal, parallel)
    lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(rules))))
    lines.extend(f"call_{i}: {rule}" for i, rule in enumerate(rules))
    if answer_schema is not None:
        lines.insert(0, "start: calls | answer")
        lines.append("answer: %json " + json.dumps(_with_style(answer_schema), ensure_ascii=False))
    else:
        lines.insert(0, "start: calls")
    return LLMatcher.grammar_from_lark("\n".join(lines) + "\n")
