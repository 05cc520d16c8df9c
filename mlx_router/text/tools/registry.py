"""The registry of tool-call formats and the choice of one for a model.

The default comes from the model's chat template (each family's template writes its own call
syntax into the prompt's instructions or examples); a model's ``tool_parser`` in config.json
overrides it. A template that renders no tools at all gets tools described in the system prompt
by the server (see ``mlx_router.text.tools.prompt``) and answers in the ``hermes`` format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlx_router.text.tools.base import ToolFormat
from mlx_router.text.tools.json_calls import (
    DeepSeekFormat,
    HarmonyFormat,
    HermesFormat,
    Llama3JsonFormat,
    MistralFormat,
)
from mlx_router.text.tools.markup_calls import (
    FunctionGemmaFormat,
    GemmaFormat,
    GlmFormat,
    PythonicFormat,
    Qwen3CoderFormat,
)

__all__ = ["FALLBACK_FORMAT", "FORMATS", "detect_tool_format", "make_format", "template_renders_tools"]

FORMATS: dict[str, type[ToolFormat]] = {
    cls.name: cls
    for cls in (
        HermesFormat,
        Qwen3CoderFormat,
        Llama3JsonFormat,
        MistralFormat,
        DeepSeekFormat,
        HarmonyFormat,
        GlmFormat,
        GemmaFormat,
        FunctionGemmaFormat,
        PythonicFormat,
    )
}
FALLBACK_FORMAT = "hermes"
"""The format of tools described by the server itself, and of templates with unknown markers."""

# (marker in the template, format): first match wins, most specific first.
_SIGNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<function=", "<parameter="), "qwen3_coder"),
    (("<arg_key>",), "glm"),
    (("<tool_call>",), "hermes"),
    (("[TOOL_CALLS]",), "mistral"),
    (("tool▁calls▁begin",), "deepseek"),
    (("<|channel|>",), "harmony"),
    (("<|tool_call>",), "gemma"),
    (("<start_function_call>",), "function_gemma"),
    (("<|python_start|>",), "pythonic"),
    (("[func_name1(",), "pythonic"),
    (("<|python_tag|>",), "llama3_json"),
    (('"parameters": dictionary of argument name',), "llama3_json"),
)


def _source(chat_template: str | Mapping[str, str] | None) -> str:
    if isinstance(chat_template, Mapping):
        return "\n".join(str(source) for source in chat_template.values())
    return chat_template or ""


def template_renders_tools(chat_template: str | Mapping[str, str] | None) -> bool:
    """Whether the template does anything with a ``tools`` variable."""
    return "tools" in _source(chat_template)


def detect_tool_format(chat_template: str | Mapping[str, str] | None) -> str:
    """The tool-call format a chat template asks its model for (``hermes`` when unknown)."""
    source = _source(chat_template)
    for markers, name in _SIGNS:
        if all(marker in source for marker in markers):
            return name
    return FALLBACK_FORMAT


def make_format(name: str, tools: list[dict[str, Any]] | None = None) -> ToolFormat:
    """A format by name, bound to the request's tools (typed formats read their schemas)."""
    try:
        return FORMATS[name](tools)
    except KeyError:
        raise ValueError(f"unknown tool format {name!r}; known: {', '.join(sorted(FORMATS))}") from None
