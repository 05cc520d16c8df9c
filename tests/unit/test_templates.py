"""Named chat templates render each family's official markers."""

from __future__ import annotations

import jinja2
import pytest

from mlx_router.text.templates import TEMPLATES, named_template

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
]

EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "phi4": "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
    "<|im_start|>assistant<|im_sep|>Hello!<|im_end|><|im_start|>user<|im_sep|>Capital of France?<|im_end|>"
    "<|im_start|>assistant<|im_sep|>",
    "deepseek": "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>"
    "<｜User｜>Capital of France?<｜Assistant｜>",
    "gpt-oss": "<|start|>system<|message|>Be brief.<|end|><|start|>user<|message|>Hi<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello!<|end|>"
    "<|start|>user<|message|>Capital of France?<|end|><|start|>assistant",
    "generic": "### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\nHello!\n\n"
    "### User:\nCapital of France?\n\n### Assistant:\n",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_official_format(name: str) -> None:
    template = jinja2.Environment().from_string(named_template(name))
    assert template.render(messages=MESSAGES, add_generation_prompt=True) == EXPECTED[name]


def test_qwen_is_chatml_and_unknown_names_fail() -> None:
    assert TEMPLATES["qwen"] == TEMPLATES["chatml"]
    with pytest.raises(ValueError, match="unknown chat template"):
        named_template("nope")
