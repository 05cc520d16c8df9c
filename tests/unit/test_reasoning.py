"""Reasoning separation, for whole texts and for every way of cutting them into pieces."""

from __future__ import annotations

import pytest

from mlx_router.text.reasoning import ReasoningSplitter

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
