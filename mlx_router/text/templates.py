"""Named chat templates, each in its family's official format.

The tokenizer's own template is always preferred (it carries tool formats, thinking switches
and BOS rules); these apply when a model ships none or the configuration names one. They are
Jinja sources rendered by the tokenizer's ``apply_chat_template``, so they see what official
templates see: ``messages``, ``tools``, ``add_generation_prompt``, the tokenizer's special
tokens (``bos_token``, ...), ``raise_exception``, ``strftime_now``, and any extra keyword the
caller passes (mlx-lm always passes ``enable_thinking``).

Each template follows one official template, cited in its comment; copies of those sources are
in ``tests/unit/official_templates/`` and the tests check that ours render the same prompts.
Where ours differ on purpose, the comment says so. Common to all of them:

* ``developer`` messages are treated as ``system`` (except gpt-oss, where developer is a role);
* an assistant message whose content is None (or missing: transformers drops None values) is
  rendered with empty content, where official templates fail;
* tool-call ``arguments`` may be a JSON string (OpenAI) or a mapping (Hugging Face);
* BOS is written through the ``bos_token`` variable where the family uses one (Llama 3,
  DeepSeek). ``apply_chat_template(tokenize=True)`` tokenizes the rendered text with
  ``add_special_tokens=False``, so the BOS is not added a second time.

All tags strip the whitespace around them (``{%-``/``{{-``), so the output does not depend on
the environment's ``trim_blocks``/``lstrip_blocks`` settings.
"""

from __future__ import annotations

__all__ = ["TEMPLATES", "named_template"]

# Put in front of the templates below (not gpt-oss): a copy of the messages where a developer
# message is a system message and a None / missing content is "" (tool_calls etc. are kept).
_PRELUDE = r"""
{%- set norm = namespace(messages=[]) %}
{%- for message in messages %}
    {%- set role = 'system' if message.role == 'developer' else message.role %}
    {%- set norm.messages = norm.messages + [dict(message, role=role, content=message.content or '')] %}
{%- endfor %}
{%- set messages = norm.messages %}
"""

# Tool calls of an assistant turn written the Hermes way (as Qwen does), for the templates whose
# family has no tool-call syntax of its own: ChatML, Phi-4 and generic.
_HERMES_TOOL_CALLS = r"""
    {%- for tool_call in message.tool_calls or [] %}
        {%- if not loop.first or message.content %}
            {{- '\n' }}
        {%- endif %}
        {%- if tool_call.function %}
            {%- set tool_call = tool_call.function %}
        {%- endif %}
        {{- '<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
        {{- tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson }}
        {{- '}\n</tool_call>' }}
    {%- endfor %}
"""

def _im_framed(after_role: str, after_turn: str) -> str:
    """``<|im_start|>{role}{after_role}{content}<|im_end|>{after_turn}`` for every message (any
    role, so "tool" too), tool calls as Hermes blocks: ChatML and Phi-4 differ only in the
    separators."""
    return (
        _PRELUDE
        + r"""
{%- for message in messages %}
    {{- '<|im_start|>' + message.role + '"""
        + after_role
        + r"""' + message.content }}
"""
        + _HERMES_TOOL_CALLS
        + r"""
    {{- '<|im_end|>"""
        + after_turn
        + r"""' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant"""
        + after_role
        + r"""' }}
{%- endif %}
"""
    )


# ChatML as transformers applied it by default (huggingface/transformers <= v4.42,
# PreTrainedTokenizerBase.default_chat_template; tests/unit/official_templates/chatml.jinja):
# <|im_start|>{role}\n{content}<|im_end|>\n for every message, any role (so "tool" too).
# Ours adds: tool calls in Hermes <tool_call> blocks (official ChatML has no tool-call syntax).
_CHATML = _im_framed(r"\n", r"\n")  # Jinja escapes, as in the official source


# Qwen: the Qwen3 template (Qwen/Qwen3-* tokenizer_config.json, Apache-2.0;
# tests/unit/official_templates/qwen3.jinja): ChatML, tools as Hermes <tools>/<tool_call>, tool
# results as a user turn of <tool_response> blocks, reasoning of earlier turns dropped.
# It is also Qwen2 / Qwen2.5's format, with two decisions:
# * No default system prompt. Qwen2.5's template inserts "You are Qwen, created by Alibaba Cloud.
#   You are a helpful assistant." when none is given (Qwen2: "You are a helpful assistant.");
#   Qwen3's does not. An identity claim is wrong for fine-tunes and Qwen3, so none is added:
#   send it as a system message if wanted. With a system message, Qwen2.5's output is identical.
# * enable_thinking is ignored. Qwen3's template answers enable_thinking=false with an empty
#   "<think>\n\n</think>\n\n" after the generation prompt, but mlx-lm passes
#   enable_thinking=false for every vocabulary without <think> (all of Qwen2 / 2.5), where that
#   block would be garbage. Qwen3 models ship their own template anyway.
_QWEN = (
    _PRELUDE
    + r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{#- The last real user query: assistant turns after it (tool-use steps) keep their reasoning. #}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if (loop.first and content) or (not loop.first) %}
                {{- '\n' }}
            {%- endif %}
            {%- if tool_call.function %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {{- tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
)

# Llama 3.1 / 3.2 / 3.3 Instruct: the Llama 3.2 template (meta-llama/Llama-3.2-3B-Instruct
# tokenizer_config.json, Llama 3.2 Community License; tests/unit/official_templates/llama3.2.jinja).
# Since 3.1 every prompt opens with a system header carrying "Cutting Knowledge Date: December
# 2023" and "Today Date: ..." even when no system message is given; the models were trained so,
# hence it is kept. The date is the `date_string` variable, else today's (strftime_now, as 3.2
# does; 3.1 / 3.3 default to a fixed "26 Jul 2024" and render identically given date_string).
# Tool results go to the "ipython" role, JSON-encoded (a string result gets quotes: official).
# Differences: no 3.1 `builtin_tools` (ipython <|python_tag|> calls); string tool-call arguments
# are written as they are (official passes them through tojson, quoting the JSON a second time).
_LLAMA3 = (
    _PRELUDE
    + r"""
{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{#- The first system message goes into the system header. #}
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{#- Custom tools go into the first user message, with some guidance. #}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0].content | trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' }}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>" }}
{%- endif %}
{%- for message in messages %}
    {%- if message.tool_calls %}
        {%- if not message.tool_calls | length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""
)

# Phi-4 (microsoft/phi-4 tokenizer_config.json, MIT; tests/unit/official_templates/phi4.jinja):
# <|im_start|>{role}<|im_sep|>{content}<|im_end|>, no newlines, no BOS.
# Differences: official renders only system / user / assistant and silently drops the rest;
# ours renders a tool result as a "tool" turn in the same framing, and tool calls as Hermes
# <tool_call> blocks (Phi-4 has no tool format of its own).
_PHI4 = _im_framed("<|im_sep|>", "")


# DeepSeek-R1 (deepseek-ai/DeepSeek-R1 tokenizer_config.json, MIT, February 2025 revision;
# tests/unit/official_templates/deepseek-r1.jinja), also DeepSeek-V3's layout: BOS, all system
# messages joined by a blank line, then <｜User｜> / <｜Assistant｜> turns; the reasoning of
# earlier assistant turns (up to </think>) is dropped; the generation prompt opens the think
# block: "<｜Assistant｜><think>\n".
# Differences:
# * enable_thinking=false leaves out "<think>\n" (plain "<｜Assistant｜>", DeepSeek-V3's prompt).
#   mlx-lm passes enable_thinking=false when the vocabulary has no <think> token, which is
#   exactly when the model cannot be a reasoning model.
# * Official opens <｜tool▁calls▁begin｜> only for the first tool-calling turn of the whole
#   conversation and <｜tool▁outputs▁begin｜> only for the first block of tool results (its
#   flags are never reset); ours does it for every turn / block.
# * A tool call without "type" is written as "function" (official fails).
_DEEPSEEK = (
    _PRELUDE
    + r"""
{%- set ns = namespace(is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if ns.is_first_sp %}
            {%- set ns.system_prompt = ns.system_prompt + message.content %}
            {%- set ns.is_first_sp = false %}
        {%- else %}
            {%- set ns.system_prompt = ns.system_prompt + '\n\n' + message.content %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{{- ns.system_prompt }}
{%- for message in messages %}
    {%- if message.role != 'tool' %}
        {%- set ns.is_output_first = true %}
    {%- endif %}
    {%- if message.role == 'user' %}
        {%- set ns.is_tool = false %}
        {{- '<｜User｜>' + message.content }}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {%- set ns.is_tool = false %}
        {{- '<｜Assistant｜>' + message.content + '<｜tool▁calls▁begin｜>' }}
        {%- for tool in message.tool_calls %}
            {%- if not loop.first %}
                {{- '\n' }}
            {%- endif %}
            {{- '<｜tool▁call▁begin｜>' + (tool.type or 'function') + '<｜tool▁sep｜>' + tool.function.name + '\n```json\n' }}
            {{- tool.function.arguments if tool.function.arguments is string else tool.function.arguments | tojson }}
            {{- '\n```<｜tool▁call▁end｜>' }}
        {%- endfor %}
        {{- '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>' }}
    {%- elif message.role == 'assistant' and ns.is_tool %}
        {{- '<｜tool▁outputs▁end｜>' + message.content + '<｜end▁of▁sentence｜>' }}
        {%- set ns.is_tool = false %}
    {%- elif message.role == 'assistant' %}
        {{- '<｜Assistant｜>' + message.content.split('</think>')[-1] + '<｜end▁of▁sentence｜>' }}
    {%- elif message.role == 'tool' %}
        {%- set ns.is_tool = true %}
        {%- if ns.is_output_first %}
            {{- '<｜tool▁outputs▁begin｜>' }}
            {%- set ns.is_output_first = false %}
        {%- endif %}
        {{- '<｜tool▁output▁begin｜>' + message.content + '<｜tool▁output▁end｜>' }}
    {%- endif %}
{%- endfor %}
{%- if ns.is_tool %}
    {{- '<｜tool▁outputs▁end｜>' }}
{%- endif %}
{%- if add_generation_prompt and not ns.is_tool %}
    {{- '<｜Assistant｜>' }}
    {%- if not (enable_thinking is defined and enable_thinking is false) %}
        {{- '<think>\n' }}
    {%- endif %}
{%- endif %}
"""
)

# gpt-oss "harmony" (openai/gpt-oss-20b / -120b chat_template.jinja, Apache-2.0;
# tests/unit/official_templates/gpt-oss.jinja). A system message states the model identity
# (`model_identity`, default "You are ChatGPT, a large language model trained by OpenAI." as
# the models were trained with it), knowledge cutoff, current date, `reasoning_effort` (default
# medium) and the valid channels; the first system / developer message becomes the developer
# message ("# Instructions"); earlier assistant answers go to the final channel (their reasoning
# is dropped); tool calls go to "functions.NAME" on the commentary channel and their results
# come back from it, JSON-encoded. The generation prompt is "<|start|>assistant", so the model
# writes "<|channel|>analysis<|message|>..." next (see mlx_router.text.reasoning.HarmonySplitter).
# Differences:
# * `tools` (definitions) are refused with an error: the official TypeScript-style rendering of
#   tool schemas is not reproduced here. Use the model's own template for tool use.
# * Later system / developer messages are rendered as developer messages (official drops them).
# * A tool result with no earlier tool call names its tool from the message's `name` (else
#   "tool") where official fails; string tool-call arguments are written as they are (official
#   quotes them again with tojson).
# * Assistant content holding <|channel|> markup is rendered as it is (official fails).
# * Without strftime_now (plain Jinja) the "Current date" line is left out.
_GPT_OSS = r"""
{%- set norm = namespace(messages=[]) %}
{%- for message in messages %}
    {%- set norm.messages = norm.messages + [dict(message, content=message.content or '')] %}
{%- endfor %}
{%- set messages = norm.messages %}
{%- if tools %}
    {{- raise_exception("The named gpt-oss template does not render tool definitions; use the model's own chat template for tools.") }}
{%- endif %}
{%- if model_identity is not defined %}
    {%- set model_identity = "You are ChatGPT, a large language model trained by OpenAI." %}
{%- endif %}
{%- if reasoning_effort is not defined %}
    {%- set reasoning_effort = "medium" %}
{%- endif %}
{{- "<|start|>system<|message|>" + model_identity + "\n" }}
{{- "Knowledge cutoff: 2024-06\n" }}
{%- if strftime_now is defined %}
    {{- "Current date: " + strftime_now("%Y-%m-%d") + "\n" }}
{%- endif %}
{{- "\nReasoning: " + reasoning_effort + "\n\n" }}
{{- "# Valid channels: analysis, commentary, final. Channel must be included for every message." }}
{{- "<|end|>" }}
{%- if messages[0].role in ["developer", "system"] %}
    {%- if messages[0].content %}
        {{- "<|start|>developer<|message|># Instructions\n\n" + messages[0].content + "\n\n<|end|>" }}
    {%- endif %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set last_tool_call = namespace(name=none) %}
{%- for message in loop_messages %}
    {%- if message.role == 'assistant' and message.tool_calls %}
        {#- Reasoning is shown only for a tool call that no final answer follows yet. #}
        {%- set future_final_message = namespace(found=false) %}
        {%- for future_message in loop_messages[loop.index:] %}
            {%- if future_message.role == 'assistant' and not future_message.tool_calls %}
                {%- set future_final_message.found = true %}
            {%- endif %}
        {%- endfor %}
        {#- One call per message, as in harmony; a tool result is named after the last call. #}
        {%- set tool_call = message.tool_calls[0] %}
        {%- if tool_call.function %}
            {%- set tool_call = tool_call.function %}
        {%- endif %}
        {%- if message.content and message.thinking %}
            {{- raise_exception("Cannot pass both content and thinking in an assistant message with tool calls! Put the analysis message in one or the other, but not both.") }}
        {%- elif message.content and not future_final_message.found %}
            {{- "<|start|>assistant<|channel|>analysis<|message|>" + message.content + "<|end|>" }}
        {%- elif message.thinking and not future_final_message.found %}
            {{- "<|start|>assistant<|channel|>analysis<|message|>" + message.thinking + "<|end|>" }}
        {%- endif %}
        {{- "<|start|>assistant to=functions." + tool_call.name + "<|channel|>commentary " }}
        {{- (tool_call.content_type if tool_call.content_type is defined else "json") + "<|message|>" }}
        {{- tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson }}
        {{- "<|call|>" }}
        {%- set last_tool_call.name = tool_call.name %}
    {%- elif message.role == 'assistant' and loop.last and not add_generation_prompt %}
        {#- Only when training: the last turn keeps its reasoning and ends with <|return|>. #}
        {%- if "thinking" in message %}
            {{- "<|start|>assistant<|channel|>analysis<|message|>" + message.thinking + "<|end|>" }}
        {%- endif %}
        {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|return|>" }}
    {%- elif message.role == 'assistant' %}
        {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|end|>" }}
        {%- set last_tool_call.name = none %}
    {%- elif message.role == 'tool' %}
        {{- "<|start|>functions." + (last_tool_call.name or message.name or "tool") }}
        {{- " to=assistant<|channel|>commentary<|message|>" + message.content | tojson + "<|end|>" }}
    {%- elif message.role == 'user' %}
        {{- "<|start|>user<|message|>" + message.content + "<|end|>" }}
    {%- elif message.role in ["developer", "system"] %}
        {{- "<|start|>developer<|message|># Instructions\n\n" + message.content + "\n\n<|end|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- "<|start|>assistant" }}
{%- endif %}
"""

# Generic: a readable "### Role:" layout for models without any template (no official source).
_GENERIC = (
    _PRELUDE
    + r"""
{%- for message in messages %}
    {{- '### ' + message.role | capitalize + ':\n' + message.content }}
"""
    + _HERMES_TOOL_CALLS
    + r"""
    {{- '\n\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '### Assistant:\n' }}
{%- endif %}
"""
)

TEMPLATES: dict[str, str] = {
    "chatml": _CHATML,
    "qwen": _QWEN,
    "llama3": _LLAMA3,
    "phi4": _PHI4,
    "deepseek": _DEEPSEEK,
    "gpt-oss": _GPT_OSS,
    "generic": _GENERIC,
}


def named_template(name: str) -> str:
    """The Jinja source of a named template (names are validated by the config schema)."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None
