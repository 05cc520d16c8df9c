"""Tools for models whose chat template cannot render them.

Such a model (a template with no ``tools`` variable, like SmolLM2's) can still call tools when
the operator marks it ``supports_tools``: the tools are described in the system message in the
Hermes style (the wording of Qwen2.5's template), earlier calls are written back as
``<tool_call>`` blocks and tool results as ``<tool_response>`` blocks in a user turn, which any
template renders. The model answers in the ``hermes`` format.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["describe_tools", "flatten_tool_history"]

_INSTRUCTIONS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def describe_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with the tools described at the end of the system message (added if absent)."""
    listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    text = _INSTRUCTIONS.format(tools=listing)
    messages = list(messages)
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        messages[0] = {**first, "content": f"{first.get('content') or ''}\n\n{text}".lstrip()}
    else:
        messages.insert(0, {"role": "system", "content": text})
    return messages


def flatten_tool_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls and tool results as plain text turns any template can render.
    Consecutive tool results become one user turn, as Qwen2.5's template groups them."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            blocks = [
                "<tool_call>\n"
                + json.dumps({"name": call["function"]["name"], "arguments": call["function"]["arguments"]}, ensure_ascii=False)
                + "\n</tool_call>"
                for call in message["tool_calls"]
            ]
            content = "\n".join([message.get("content") or "", *blocks]).strip()
            out.append({"role": "assistant", "content": content})
        elif role == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            out.append(message)
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]
