"""Reasoning separation, for whole texts and for every way of cutting them into pieces."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_router.text.reasoning import (
    HarmonySplitter,
    ReasoningSplitter,
    detect_reasoning_format,
    make_splitter,
)
from mlx_router.text.templates import named_template

CASES = [
    ("plain answer", False, "", "plain answer"),
    ("<think>step 1, step 2</think>The answer is 4.", False, "step 1, step 2", "The answer is 4."),
    ("considering...</think>Paris.", True, "considering...", "Paris."),
    ("a < b <thin and <think>x</think> done", False, "x", "a < b <thin and  done"),
    ("<think>unfinished", False, "unfinished", ""),
    ("ends with <thi", False, "", "ends with <thi"),
]


def run(splitter: ReasoningSplitter, pieces: list[str]) -> tuple[str, str]:
    reasoning, content = "", ""
    for piece in pieces:
        r, c = splitter.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize(("text", "inside", "reasoning", "content"), CASES)
def test_whole_and_every_cut(text: str, inside: bool, reasoning: str, content: str) -> None:
    assert run(ReasoningSplitter(inside=inside), [text]) == (reasoning, content)
    for cut in range(len(text) + 1):
        assert run(ReasoningSplitter(inside=inside), [text[:cut], text[cut:]]) == (reasoning, content)
    assert run(ReasoningSplitter(inside=inside), list(text)) == (reasoning, content)


def test_partial_tag_is_held_back_until_known() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("Hello <th") == ("", "Hello ")
    assert splitter.feed("ink>hmm") == ("hmm", "")


# gpt-oss (harmony): the generation prompt ends with "<|start|>assistant", so output starts at
# the channel (or at the header's " to=" part); <|return|> / <|call|> end the sequence.
HARMONY_CASES = [
    (
        (
            "<|channel|>analysis<|message|>User greets. Reply.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Hello!<|return|>"
        ),
        "User greets. Reply.",
        "Hello!",
    ),
    ("<|channel|>final<|message|>Just the answer.<|return|>", "", "Just the answer."),
    ("plain text, no markup", "", "plain text, no markup"),
    ("tomorrow <| is not a tag", "", "tomorrow <| is not a tag"),
    ("\n<|channel|>final<|message|>x<|end|>", "", "x"),
    ("<|start|>assistant<|channel|>final<|message|>explicit start<|end|>", "", "explicit start"),
    # commentary without a recipient (a preamble) is reasoning
    (
        "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>",
        "Checking.",
        "Done.",
    ),
    # a tool call (commentary to=...) is content for now, with the recipient after the channel...
    (
        (
            "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
            'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        ),
        "Need weather.",
        '{"city": "Paris"}',
    ),
    # ...or before it (as the template writes history), right at the start of the output
    (
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        "",
        '{"city": "Paris"}',
    ),
    # a built-in tool call on the analysis channel stays reasoning
    ('<|channel|>analysis to=browser.search code<|message|>{"query": "x"}<|call|>', '{"query": "x"}', ""),
    # text between messages, a message without channel, an unknown channel: content
    (
        "<|channel|>analysis<|message|>r<|end|>stray<|start|>assistant<|channel|>final<|message|>c<|return|>",
        "r",
        "strayc",
    ),
    ("<|message|>no channel<|end|>", "", "no channel"),
    ("<|channel|>weird<|message|>x<|end|>", "", "x"),
    # look-alikes inside a body are text
    (
        "<|channel|>final<|message|>a <|b| <|end and to=x, <think>y</think><|return|>",
        "",
        "a <|b| <|end and to=x, <think>y</think>",
    ),
    # cut off: an open body keeps its text, an open header is dropped, a partial token is text
    ("<|channel|>analysis<|message|>still thinking", "still thinking", ""),
    ("<|channel|>analysis<|message|>A<|end|><|start|>assistant<|channel|>fin", "A", ""),
    ("<|channel|>final<|message|>B <|ret", "", "B <|ret"),
]


def run_harmony(pieces: list[str]) -> tuple[str, str]:
    splitter = make_splitter("harmony", inside=False)
    reasoning, content = "", ""
    for piece in pieces:
        r, c = splitter.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize(("text", "reasoning", "content"), HARMONY_CASES)
def test_harmony_whole_every_cut_and_char_by_char(text: str, reasoning: str, content: str) -> None:
    assert run_harmony([text]) == (reasoning, content)
    for cut in range(len(text) + 1):
        assert run_harmony([text[:cut], text[cut:]]) == (reasoning, content), cut
    for first in range(0, len(text) + 1, 7):  # three pieces, cut at every pair of positions
        for second in range(first, len(text) + 1):
            assert run_harmony([text[:first], text[first:second], text[second:]]) == (reasoning, content)
    assert run_harmony(list(text)) == (reasoning, content)


def test_harmony_streams_as_it_goes() -> None:
    splitter = HarmonySplitter()
    assert splitter.feed("<|chan") == ("", "")
    assert splitter.feed("nel|>analysis<|mess") == ("", "")
    assert splitter.feed("age|>Let me <|e") == ("Let me ", "")
    assert splitter.feed("xplain") == ("<|explain", "")  # not a token after all
    assert splitter.feed("<|end|><|start|>assistant<|channel|>final<|message|>Paris") == ("", "Paris")
    assert splitter.feed(".<|return|>") == ("", ".")
    assert splitter.flush() == ("", "")


def test_harmony_holds_text_that_may_become_a_recipient() -> None:
    splitter = HarmonySplitter()
    assert splitter.feed(" t") == ("", "")
    assert splitter.feed("o") == ("", "")
    assert splitter.feed("day") == ("", " today")


def test_make_splitter_and_detect_reasoning_format() -> None:
    think = make_splitter("think", inside=True)
    assert isinstance(think, ReasoningSplitter) and think.inside
    assert isinstance(make_splitter("harmony", inside=False), HarmonySplitter)
    with pytest.raises(ValueError, match="unknown reasoning format"):
        make_splitter("xml", inside=False)
    official = Path(__file__).parent / "official_templates"
    assert detect_reasoning_format((official / "gpt-oss.jinja").read_text(encoding="utf-8")) == "harmony"
    assert detect_reasoning_format(named_template("gpt-oss")) == "harmony"
    for name in ("qwen", "deepseek", "llama3", "chatml", "phi4", "generic"):
        assert detect_reasoning_format(named_template(name)) == "think"
    assert detect_reasoning_format((official / "qwen3.jinja").read_text(encoding="utf-8")) == "think"
    assert detect_reasoning_format(None) == "think"
    assert detect_reasoning_format("") == "think"
    assert detect_reasoning_format({"default": "x", "tool_use": "<|channel|>"}) == "harmony"
