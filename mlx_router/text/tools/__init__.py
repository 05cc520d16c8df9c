"""Tool calls: one parser per model family's format, a registry, and the stream that applies
a format to model output (see ``base``)."""

from mlx_router.text.tools.base import CallDelta, ParsedCall, ToolCallStream, ToolFormat, new_call_id, parse_tool_calls
from mlx_router.text.tools.registry import (
    FALLBACK_FORMAT,
    FORMATS,
    detect_tool_format,
    make_format,
    template_renders_tools,
)

__all__ = [
    "FALLBACK_FORMAT",
    "FORMATS",
    "CallDelta",
    "ParsedCall",
    "ToolCallStream",
    "ToolFormat",
    "detect_tool_format",
    "make_format",
    "new_call_id",
    "parse_tool_calls",
    "template_renders_tools",
]
