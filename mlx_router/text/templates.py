"""Named chat templates from the old configuration, each in its family's official format.

The tokenizer's own template is always preferred (it carries tool formats, thinking switches
and BOS rules); these apply when a model ships none or the configuration names one. They are
Jinja sources rendered by the tokenizer's ``apply_chat_template``, so BOS handling and
``add_generation_prompt`` behave exactly as with a shipped template.
"""

from __future__ import annotations

__all__ = ["TEMPLATES", "named_template"]

_CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_LLAMA3 = (
    "{{ '<|begin_of_text|>' }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] or '') | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_PHI4 = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '<|im_sep|>' + (m['content'] or '') + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)

# DeepSeek-V3 / R1: system text first, then alternating User/Assistant markers.
_DEEPSEEK = (
    "{{ '<｜begin▁of▁sentence｜>' }}"
    "{% for m in messages if m['role'] == 'system' %}{{ m['content'] }}{% endfor %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + (m['content'] or '') + '<｜end▁of▁sentence｜>' }}"
    "{% elif m['role'] == 'tool' %}{{ '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + m['content'] + '<｜tool▁output▁end｜><｜tool▁outputs▁end｜>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

# gpt-oss "harmony": final answers go to the `final` channel.
_GPT_OSS = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|start|>assistant<|channel|>final<|message|>' + (m['content'] or '') + '<|end|>' }}"
    "{% elif m['role'] == 'developer' %}"
    "{{ '<|start|>developer<|message|># Instructions\\n\\n' + m['content'] + '<|end|>' }}"
    "{% else %}"
    "{{ '<|start|>' + m['role'] + '<|message|>' + m['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
)

_GENERIC = (
    "{% for m in messages %}"
    "{{ '### ' + m['role'] | capitalize + ':\\n' + (m['content'] or '') + '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

TEMPLATES: dict[str, str] = {
    "chatml": _CHATML,
    "qwen": _CHATML,
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
