"""Named chat templates: the exact prompt of every family, and agreement with the official templates.

``EXPECTED`` holds, for each named template and each conversation in ``CONVERSATIONS``, the exact
prompt, derived by rendering the official templates kept in ``official_templates/`` (each file
names its source). ``OFFICIAL`` pairs each named template with the official ones it follows: the
official template must render the same string, except for the (file, conversation) pairs in
``DIFFERENCES``, deliberate differences explained in ``mlx_router/text/templates.py``, where the
outputs must differ (so the list stays true).

Everything is rendered the way the server does it: through a Hugging Face tokenizer's
``apply_chat_template`` (same Jinja environment, ``raise_exception``, ``strftime_now``,
``bos_token`` and dropping of None values). The clock behind ``strftime_now`` is fixed.
"""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils

from mlx_router.protocol.chat import ChatMessage
from mlx_router.text.templates import TEMPLATES, named_template

OFFICIAL_DIR = Path(__file__).parent / "official_templates"
BOS = {"llama3": "<|begin_of_text|>", "deepseek": "<｜begin▁of▁sentence｜>"}
KWARGS: dict[str, dict[str, Any]] = {"llama3": {"date_string": "26 Jul 2024"}}
NOW = datetime.datetime(2025, 3, 14, 9, 26, 53)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``strftime_now`` (transformers) reads ``datetime.now()`` from its module."""

    class FixedDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> FixedDatetime:
            return cls(NOW.year, NOW.month, NOW.day, NOW.hour, NOW.minute, NOW.second)

    monkeypatch.setattr(chat_template_utils, "datetime", FixedDatetime)


_TOKENIZERS: dict[str | None, PreTrainedTokenizerFast] = {}


def tokenizer(bos: str | None) -> PreTrainedTokenizerFast:
    """A tiny tokenizer whose only job is rendering templates (and, for BOS, adding one)."""
    if bos not in _TOKENIZERS:
        vocab = {"[UNK]": 0, **({bos: 1} if bos else {})}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        if bos:
            tok.add_special_tokens([bos])
            # Like Llama 3 / DeepSeek tokenizers: encoding with special tokens prepends BOS.
            tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 1)])
        _TOKENIZERS[bos] = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", **({"bos_token": bos} if bos else {})
        )
    return _TOKENIZERS[bos]


def render(template: str, messages: list[dict[str, Any]], bos: str | None = None, **kwargs: Any) -> str:
    return tokenizer(bos).apply_chat_template(
        copy.deepcopy(messages), chat_template=template, tokenize=False, add_generation_prompt=True, **kwargs
    )


def render_named(name: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return render(TEMPLATES[name], messages, BOS.get(name), **{**KWARGS.get(name, {}), **kwargs})


def official(file: str) -> str:
    return (OFFICIAL_DIR / f"{file}.jinja").read_text(encoding="utf-8")


def tool_call(arguments: Any) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


CALL = tool_call({"city": "Paris"})
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "user": [{"role": "user", "content": "Hi"}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "multi": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
    ],
    "developer": [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
    "tool": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    ],
    "tool_cycle": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "assistant", "content": "18C and sunny."},
        {"role": "user", "content": "Thanks!"},
    ],
    "none": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Still there?"},
    ],
}

GPT_OSS_SYSTEM = (
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\nCurrent date: 2025-03-14\n\nReasoning: medium\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
)
LLAMA3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)

EXPECTED: dict[str, dict[str, str]] = {
    "chatml": {
        "user": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "system": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "multi": (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
            "<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
        ),
        "developer": (
            "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        ),
        "tool": (
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n<|im_start|>tool\n'
            "18C, sunny<|im_end|>\n<|im_start|>assistant\n"
        ),
        "tool_cycle": (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|im_end|>\n<|im_start|>tool\n18C, sunny<|im_end|>\n<|im_start|>assistant\n18C and sunny."
            "<|im_end|>\n<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n"
        ),
        "none": (
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\nStill there?"
            "<|im_end|>\n<|im_start|>assistant\n"
        ),
    },
    "qwen": {
        "user": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "system": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "multi": (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
            "<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
        ),
        "developer": (
            "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        ),
        "tool": (
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n<|im_start|>user\n'
            "<tool_response>\n18C, sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        ),
        "tool_cycle": (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n18C and sunny.<|im_end|>\n<|im_start|>user\nThanks!<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        "none": (
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\nStill there?"
            "<|im_end|>\n<|im_start|>assistant\n"
        ),
    },
    "llama3": {
        "user": LLAMA3_SYSTEM
        + (
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
            "<|end_header_id|>\n\n"
        ),
        "system": LLAMA3_SYSTEM
        + (
            "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "multi": LLAMA3_SYSTEM
        + (
            "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\nCapital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "developer": LLAMA3_SYSTEM
        + (
            "Answer in French.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "tool": LLAMA3_SYSTEM
        + (
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|><|start_header_id|>ipython'
            '<|end_header_id|>\n\n"18C, sunny"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
        ),
        "tool_cycle": LLAMA3_SYSTEM
        + (
            "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|><|start_header_id|>ipython'
            '<|end_header_id|>\n\n"18C, sunny"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
            "18C and sunny.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nThanks!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "none": LLAMA3_SYSTEM
        + (
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
            "<|end_header_id|>\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nStill there?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    },
    "phi4": {
        "user": "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>",
        "system": (
            "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
            "<|im_start|>assistant<|im_sep|>"
        ),
        "multi": (
            "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
            "<|im_start|>assistant<|im_sep|>Hello!<|im_end|><|im_start|>user<|im_sep|>Capital of France?<|im_end|>"
            "<|im_start|>assistant<|im_sep|>"
        ),
        "developer": (
            "<|im_start|>system<|im_sep|>Answer in French.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
            "<|im_start|>assistant<|im_sep|>"
        ),
        "tool": (
            "<|im_start|>user<|im_sep|>Weather in Paris?<|im_end|><|im_start|>assistant<|im_sep|><tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|><|im_start|>tool'
            "<|im_sep|>18C, sunny<|im_end|><|im_start|>assistant<|im_sep|>"
        ),
        "tool_cycle": (
            "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Weather in Paris?<|im_end|>"
            '<|im_start|>assistant<|im_sep|><tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|im_end|><|im_start|>tool<|im_sep|>18C, sunny<|im_end|><|im_start|>assistant"
            "<|im_sep|>18C and sunny.<|im_end|><|im_start|>user<|im_sep|>Thanks!<|im_end|><|im_start|>assistant"
            "<|im_sep|>"
        ),
        "none": (
            "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|><|im_end|><|im_start|>user"
            "<|im_sep|>Still there?<|im_end|><|im_start|>assistant<|im_sep|>"
        ),
    },
    "deepseek": {
        "user": "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n",
        "system": "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜><think>\n",
        "multi": (
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>"
            "<｜User｜>Capital of France?<｜Assistant｜><think>\n"
        ),
        "developer": "<｜begin▁of▁sentence｜>Answer in French.<｜User｜>Hi<｜Assistant｜><think>\n",
        "tool": (
            "<｜begin▁of▁sentence｜><｜User｜>Weather in Paris?<｜Assistant｜><｜tool▁calls▁begin｜>"
            '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```'
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜>"
            "<｜tool▁output▁begin｜>18C, sunny<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
        ),
        "tool_cycle": (
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Weather in Paris?<｜Assistant｜><｜tool▁calls▁begin｜>"
            '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```'
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜>"
            "<｜tool▁output▁begin｜>18C, sunny<｜tool▁output▁end｜><｜tool▁outputs▁end｜>18C and sunny."
            "<｜end▁of▁sentence｜><｜User｜>Thanks!<｜Assistant｜><think>\n"
        ),
        "none": (
            "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><｜end▁of▁sentence｜><｜User｜>Still there?"
            "<｜Assistant｜><think>\n"
        ),
    },
    "gpt-oss": {
        "user": GPT_OSS_SYSTEM + "<|start|>user<|message|>Hi<|end|><|start|>assistant",
        "system": GPT_OSS_SYSTEM
        + (
            "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|><|start|>user<|message|>Hi<|end|>"
            "<|start|>assistant"
        ),
        "multi": GPT_OSS_SYSTEM
        + (
            "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|><|start|>user<|message|>Hi<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Hello!<|end|><|start|>user<|message|>Capital of France?"
            "<|end|><|start|>assistant"
        ),
        "developer": GPT_OSS_SYSTEM
        + (
            "<|start|>developer<|message|># Instructions\n\nAnswer in French.\n\n<|end|><|start|>user<|message|>Hi"
            "<|end|><|start|>assistant"
        ),
        "tool": GPT_OSS_SYSTEM
        + (
            "<|start|>user<|message|>Weather in Paris?<|end|><|start|>assistant to=functions.get_weather"
            '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"18C, sunny"<|end|>'
            "<|start|>assistant"
        ),
        "tool_cycle": GPT_OSS_SYSTEM
        + (
            "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|><|start|>user"
            "<|message|>Weather in Paris?<|end|><|start|>assistant to=functions.get_weather"
            '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"18C, sunny"<|end|>'
            "<|start|>assistant<|channel|>final<|message|>18C and sunny.<|end|><|start|>user<|message|>Thanks!"
            "<|end|><|start|>assistant"
        ),
        "none": GPT_OSS_SYSTEM
        + (
            "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|><|end|><|start|>user"
            "<|message|>Still there?<|end|><|start|>assistant"
        ),
    },
    "generic": {
        "user": "### User:\nHi\n\n### Assistant:\n",
        "system": "### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\n",
        "multi": (
            "### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\nHello!\n\n### User:\nCapital of France?\n\n"
            "### Assistant:\n"
        ),
        "developer": "### System:\nAnswer in French.\n\n### User:\nHi\n\n### Assistant:\n",
        "tool": (
            "### User:\nWeather in Paris?\n\n### Assistant:\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n\n### Tool:\n18C, sunny\n\n'
            "### Assistant:\n"
        ),
        "tool_cycle": (
            "### System:\nBe brief.\n\n### User:\nWeather in Paris?\n\n### Assistant:\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n\n### Tool:\n18C, sunny\n\n'
            "### Assistant:\n18C and sunny.\n\n### User:\nThanks!\n\n### Assistant:\n"
        ),
        "none": "### User:\nHi\n\n### Assistant:\n\n\n### User:\nStill there?\n\n### Assistant:\n",
    },
}


def official_input(messages: list[dict[str, Any]], *, developer: bool, arguments: str) -> list[dict[str, Any]]:
    """The messages as an official template takes them: None content as "" (official templates
    fail on it; ours render it so), developer as system unless the family has that role (the
    server's ``to_template`` does that anyway), tool-call arguments as the family expects them
    ("mapping": Llama, Qwen, gpt-oss pass them through tojson; "string": DeepSeek concatenates)."""
    out = copy.deepcopy(messages)
    for message in out:
        if message["role"] == "developer" and not developer:
            message["role"] = "system"
        if message.get("content") is None:
            message["content"] = ""
        for call in message.get("tool_calls") or []:
            if arguments == "string" and not isinstance(call["function"]["arguments"], str):
                call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    return out


def render_deepseek_r1(messages: list[dict[str, Any]]) -> str:
    theirs = official_input(messages, developer=False, arguments="string")
    return render(official("deepseek-r1"), theirs, BOS["deepseek"])


# (named template, official file, developer is a role there, form of tool-call arguments it takes)
OFFICIAL = [
    ("chatml", "chatml", False, "mapping"),
    ("qwen", "qwen3", False, "mapping"),
    ("qwen", "qwen2.5", False, "mapping"),
    ("llama3", "llama3.2", False, "mapping"),
    ("llama3", "llama3.3", False, "mapping"),
    ("phi4", "phi4", False, "mapping"),
    ("deepseek", "deepseek-r1", False, "string"),
    ("gpt-oss", "gpt-oss", True, "mapping"),
]
# (official file, conversation): why ours differs there (see mlx_router/text/templates.py).
DIFFERENCES = {
    ("chatml", "tool"): "tool calls: official ChatML has no syntax for them; ours writes Hermes <tool_call> blocks",
    ("chatml", "tool_cycle"): "tool calls written as Hermes <tool_call> blocks",
    ("qwen2.5", "user"): "no default system prompt (Qwen2.5 adds 'You are Qwen, created by Alibaba Cloud...')",
    ("qwen2.5", "tool"): "no default system prompt",
    ("qwen2.5", "none"): "no default system prompt",
    ("phi4", "tool"): "official drops tool results and tool calls; ours renders a tool turn and <tool_call> blocks",
    ("phi4", "tool_cycle"): "tool result and tool call rendered",
}


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_expected_prompt(name: str, case: str) -> None:
    assert render_named(name, CONVERSATIONS[case]) == EXPECTED[name][case]


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
@pytest.mark.parametrize(("name", "file", "developer", "arguments"), OFFICIAL, ids=[f"{o[0]}-{o[1]}" for o in OFFICIAL])
def test_official_template_renders_the_same(name: str, file: str, developer: bool, arguments: str, case: str) -> None:
    messages = official_input(CONVERSATIONS[case], developer=developer, arguments=arguments)
    theirs = render(official(file), messages, BOS.get(name), **KWARGS.get(name, {}))
    if (file, case) in DIFFERENCES:
        assert theirs != EXPECTED[name][case], f"no longer differs: {DIFFERENCES[file, case]}"
    else:
        assert theirs == EXPECTED[name][case]


def test_every_name_has_expectations_and_unknown_names_fail() -> None:
    names = ["chatml", "deepseek", "generic", "gpt-oss", "llama3", "phi4", "qwen"]
    assert sorted(TEMPLATES) == sorted(EXPECTED) == names
    assert named_template("qwen") == TEMPLATES["qwen"] != TEMPLATES["chatml"]
    with pytest.raises(ValueError, match="unknown chat template"):
        named_template("nope")


@pytest.mark.parametrize("case", ["tool", "tool_cycle"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_string_arguments_render_like_mappings(name: str, case: str) -> None:
    """OpenAI clients send tool-call arguments as a JSON string; written as they are."""
    messages = copy.deepcopy(CONVERSATIONS[case])
    for message in messages:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    assert render_named(name, messages) == EXPECTED[name][case]


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_output_does_not_depend_on_jinja_whitespace_settings(name: str, case: str) -> None:
    """Plain jinja2 (no trim_blocks / lstrip_blocks) gives the same prompt. The helpers are
    given as transformers defines them (jinja2's own tojson escapes HTML and returns Markup)."""
    env = jinja2.Environment()
    env.globals["strftime_now"] = NOW.strftime
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    messages = [{k: v for k, v in m.items() if v is not None} for m in CONVERSATIONS[case]]
    text = env.from_string(TEMPLATES[name]).render(
        messages=messages, add_generation_prompt=True, bos_token=BOS.get(name), **KWARGS.get(name, {})
    )
    assert text == EXPECTED[name][case]


@pytest.mark.parametrize("name", ["llama3", "deepseek"])
def test_bos_is_written_once_when_tokenized(name: str) -> None:
    """The template writes BOS; apply_chat_template(tokenize=True) must not add a second one,
    neither through transformers nor through mlx-lm's TokenizerWrapper (what the engine calls)."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    tok = tokenizer(BOS[name])
    assert tok.encode("Hi") == [1, 0]  # plain encoding does prepend BOS (id 1)
    messages = CONVERSATIONS["system"]
    kwargs = KWARGS.get(name, {})
    ids = tok.apply_chat_template(
        messages, chat_template=TEMPLATES[name], add_generation_prompt=True, return_dict=False, **kwargs
    )
    wrapped = TokenizerWrapper(tok).apply_chat_template(
        messages, chat_template=TEMPLATES[name], add_generation_prompt=True, tokenize=True, **kwargs
    )
    for token_ids in (list(ids), list(wrapped)):
        assert token_ids[0] == 1
        assert token_ids.count(1) == 1


def test_llama3_default_date_is_today_as_in_llama_3_2() -> None:
    messages = CONVERSATIONS["user"]
    ours = render(TEMPLATES["llama3"], messages, BOS["llama3"])
    assert "Today Date: 14 Mar 2025\n" in ours
    assert ours == render(official("llama3.2"), messages, BOS["llama3"])
    # Llama 3.1 / 3.3 fix the default date instead; given the date they agree.
    assert render(official("llama3.3"), messages, BOS["llama3"]) == EXPECTED["llama3"]["user"]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.mark.parametrize("case", ["user", "system", "tool_cycle"])
@pytest.mark.parametrize(
    ("name", "file", "kwargs"),
    [
        ("qwen", "qwen3", {}),
        ("llama3", "llama3.2", {}),
        ("llama3", "llama3.3", {}),
        ("llama3", "llama3.2", {"tools_in_user_message": False}),
    ],
)
def test_tool_definitions_render_as_official(name: str, file: str, kwargs: dict[str, Any], case: str) -> None:
    messages = CONVERSATIONS[case]
    ours = render_named(name, messages, tools=TOOLS, **kwargs)
    theirs = render(
        official(file),
        official_input(messages, developer=False, arguments="mapping"),
        BOS.get(name),
        tools=TOOLS,
        **{**KWARGS.get(name, {}), **kwargs},
    )
    assert '"get_weather"' in ours
    assert ours == theirs


def test_qwen_ignores_enable_thinking_false() -> None:
    """mlx-lm passes enable_thinking=False for vocabularies without <think> (Qwen2 / 2.5)."""
    messages = CONVERSATIONS["system"]
    assert render_named("qwen", messages, enable_thinking=False) == EXPECTED["qwen"]["system"]
    qwen3 = render(official("qwen3"), messages, enable_thinking=False)
    assert qwen3 == EXPECTED["qwen"]["system"] + "<think>\n\n</think>\n\n"


def test_deepseek_opens_the_think_block_unless_thinking_is_off() -> None:
    messages = CONVERSATIONS["system"]
    assert render_named("deepseek", messages, enable_thinking=True).endswith("<｜Assistant｜><think>\n")
    assert render_named("deepseek", messages, enable_thinking=False) == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>"
    )


def test_deepseek_drops_earlier_reasoning_and_joins_system_messages() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use SI units."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nGreeting.\n</think>\n\nHello!"},
        {"role": "user", "content": "Bye"},
    ]
    expected = (
        "<｜begin▁of▁sentence｜>Be brief.\n\nUse SI units.<｜User｜>Hi<｜Assistant｜>\n\nHello!<｜end▁of▁sentence｜>"
        "<｜User｜>Bye<｜Assistant｜><think>\n"
    )
    assert render_named("deepseek", messages) == expected
    assert render_deepseek_r1(messages) == expected


def test_deepseek_opens_every_round_of_tool_calls_and_results() -> None:
    """Official R1 opens <｜tool▁calls▁begin｜> / <｜tool▁outputs▁begin｜> only the first time."""
    second = tool_call('{"city": "Rome"}')
    messages = [
        *CONVERSATIONS["tool_cycle"],
        {"role": "assistant", "content": None, "tool_calls": [second]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
    ]
    ours = render_named("deepseek", messages)
    assert ours.endswith(
        "<｜User｜>Thanks!<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Rome"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>'
        "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>21C<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
    )
    theirs = render_deepseek_r1(messages)
    assert theirs.count("<｜tool▁calls▁begin｜>") == 1
    assert theirs.count("<｜tool▁outputs▁begin｜>") == 1


def test_deepseek_writes_several_calls_of_one_turn() -> None:
    messages = [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL, tool_call('{"city": "Rome"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
    ]
    ours = render_named("deepseek", messages)
    theirs = render_deepseek_r1(messages)
    assert ours == theirs
    assert "```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function" in ours


def test_gpt_oss_identity_and_reasoning_effort_are_variables() -> None:
    messages = CONVERSATIONS["user"]
    kwargs = {"model_identity": "You are a helpful assistant.", "reasoning_effort": "high"}
    ours = render_named("gpt-oss", messages, **kwargs)
    assert ours.startswith("<|start|>system<|message|>You are a helpful assistant.\nKnowledge cutoff: 2024-06\n")
    assert "\n\nReasoning: high\n\n" in ours
    assert ours == render(official("gpt-oss"), messages, **kwargs)


def test_gpt_oss_keeps_reasoning_before_an_unanswered_tool_call() -> None:
    messages = copy.deepcopy(CONVERSATIONS["tool"])
    messages[1]["reasoning_content"] = "Need the weather tool."
    ours = render_named("gpt-oss", messages)
    assert "<|start|>assistant<|channel|>analysis<|message|>Need the weather tool.<|end|>" in ours
    assert ours == render(official("gpt-oss"), official_input(messages, developer=True, arguments="mapping"))


def test_gpt_oss_differences_from_official() -> None:
    # A tool result whose call the client did not send back (the server drops tool_calls today).
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C"},
    ]
    assert render_named("gpt-oss", messages).endswith(
        "<|start|>assistant<|channel|>final<|message|><|end|>"
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"18C"<|end|><|start|>assistant'
    )
    with pytest.raises(jinja2.TemplateError, match="no previous assistant message with a tool call"):
        render(official("gpt-oss"), official_input(messages, developer=True, arguments="mapping"))
    # A later system / developer message is kept as a developer message (official drops it).
    messages = [*CONVERSATIONS["multi"][:3], {"role": "developer", "content": "Now in French."}]
    ours = render_named("gpt-oss", messages)
    assert ours.endswith("<|start|>developer<|message|># Instructions\n\nNow in French.\n\n<|end|><|start|>assistant")
    # Tool definitions are refused rather than dropped.
    with pytest.raises(jinja2.TemplateError, match="does not render tool definitions"):
        render_named("gpt-oss", CONVERSATIONS["user"], tools=TOOLS)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_server_messages_render(name: str) -> None:
    """What the server passes: ChatMessage.to_template() of every role, tool calls dropped."""
    messages = [
        ChatMessage(role="developer", content="Be brief."),
        ChatMessage(role="user", content=[{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]),
        ChatMessage(
            role="assistant", content=None, tool_calls=[{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
        ),
        ChatMessage(role="tool", content="18C", tool_call_id="call_1"),
    ]
    prompt = render_named(name, [m.to_template() for m in messages])
    assert "Be brief." in prompt and "Weather in Paris?" in prompt and "18C" in prompt
