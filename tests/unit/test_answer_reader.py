"""AnswerReader (api/serving/answer.py): reasoning apart, then tool calls, streamed or whole;
and the pure wire converters of protocol/."""

from __future__ import annotations

import json

import pytest

from mlx_router.api.serving.answer import AnswerReader
from mlx_router.engine.types import Admission, TokenLogprob
from mlx_router.protocol.chat import tool_call_deltas
from mlx_router.protocol.common import finish_reason
from mlx_router.protocol.completions import completion_finish, legacy_logprobs

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ANSWER = "<think>Which city?</think>Checking." + CALL


def read(text: str, pieces: int, **options: object) -> tuple[str, str, list[str]]:
    """(reasoning, content, call names) of ``text`` fed in ``pieces`` roughly equal parts."""
    admission = Admission("r", 5, 100, tool_format="hermes")
    reader = AnswerReader.for_admission(admission, **options)  # type: ignore[arg-type]
    size = max(1, len(text) // pieces)
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    reasoning, content, calls = "", "", []
    for i, part in enumerate(parts):
        piece = reader.feed(part, final=i == len(parts) - 1)
        reasoning += piece.reasoning or ""
        content += piece.content
        calls += [call.name for call in piece.calls]
    return reasoning, content, calls


@pytest.mark.parametrize("pieces", [1, 3, len(ANSWER)])
def test_reasoning_then_calls_whatever_the_cut(pieces: int) -> None:
    assert read(ANSWER, pieces, reasoning_response="enable", tools=[WEATHER]) == ("Which city?", "Checking.", ["get_weather"])


def test_disabled_reasoning_is_dropped_and_without_tools_markup_is_text() -> None:
    assert read(ANSWER, 4, reasoning_response="disable") == ("", "Checking." + CALL, [])
    assert read(ANSWER, 4, reasoning_response=None, tools=[WEATHER]) == ("", "<think>Which city?</think>Checking.", ["get_weather"])


@pytest.mark.parametrize("pieces", [1, 5])
def test_a_call_cut_short_after_a_complete_one_is_dropped(pieces: int) -> None:
    text = CALL + "\n<tool_call>\n" + '{"name": "get_wea'
    assert read(text, pieces, reasoning_response=None, tools=[WEATHER]) == ("", "", ["get_weather"])


def test_a_lone_cut_call_stays_content() -> None:
    """With no complete call, the text is all there is: it is returned as written."""
    text = '<tool_call>\n{"name": "get_wea'
    assert read(text, 2, reasoning_response=None, tools=[WEATHER]) == ("", text, [])


def test_finish_reasons() -> None:
    assert [finish_reason(r) for r in ("stop", "length", "cancelled", None)] == ["stop", "length", "stop", "stop"]
    assert [finish_reason(r, called=True) for r in ("stop", "length")] == ["tool_calls", "length"]
    assert [completion_finish(r) for r in ("stop", "length", "cancelled")] == ["stop", "length", "stop"]


def test_tool_call_deltas_name_first_then_arguments() -> None:
    first, second = (json.loads(d.model_dump_json()) for d in tool_call_deltas("c1", "f", '{"a": 1}', 2))
    assert first == {"tool_calls": [{"index": 2, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}
    assert second == {"tool_calls": [{"index": 2, "function": {"arguments": '{"a": 1}'}}]}


def test_legacy_logprobs_offsets_count_characters() -> None:
    tokens = [TokenLogprob("é", "é".encode(), -0.5, (("é", "é".encode(), -0.5),)), TokenLogprob("x", b"x", -1.0)]
    out = legacy_logprobs(tokens, 3)
    assert out.text_offset == [3, 4]
    assert out.tokens == ["é", "x"] and out.token_logprobs == [-0.5, -1.0]
    assert out.top_logprobs == [{"é": -0.5}, {}]
