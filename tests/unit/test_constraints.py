"""Grammars for forced tool calls and JSON answers: every format's forced call, as the format's
own parser reads it, is accepted token by token by the compiled grammar; wrong calls are not."""

from __future__ import annotations

import json

import pytest

llguidance = pytest.importorskip("llguidance")
from llguidance import LLMatcher

from mlx_router.text.constraints import forced_format, json_grammar, schema_depth, tool_grammar, validate_grammar
from mlx_router.text.tools import make_format, parse_tool_calls
from mlx_router.text.tools.prompt import describe_tools, flatten_tool_history

TOOLS = [
    {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": False}},
    {"name": "get_time", "parameters": {}},
]
FORCED = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    "llama3_json": '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}; {"name": "get_time", "parameters": {}}',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, {"name": "get_time", "arguments": {}}]',
    "deepseek": '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "unit": "c"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
}


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer trained on the spot (any text can be spelled)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(FORCED.values()) * 3, trainer)
    return tok


def _matcher(tokenizer, grammar: str):
    ll = llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=tokenizer.get_vocab_size(), eos_token=0)
    matcher = LLMatcher(ll, grammar)
    assert not matcher.is_error(), matcher.get_error()
    return matcher


def _accepts(tokenizer, grammar: str, text: str) -> bool:
    matcher = _matcher(tokenizer, grammar)
    ids = tokenizer.encode(text).ids
    if matcher.validate_tokens(ids) != len(ids):
        return False
    assert matcher.consume_tokens(ids)
    return matcher.is_accepting()


@pytest.mark.parametrize("fmt", sorted(FORCED))
def test_forced_calls_in_each_format(tokenizer, fmt: str) -> None:
    text = FORCED[fmt]
    grammar = tool_grammar(fmt, TOOLS, parallel=True)
    assert validate_grammar(grammar) is None
    assert _accepts(tokenizer, grammar, text)
    _content, calls = parse_tool_calls(make_format(fmt), text)  # the format's parser reads it back
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {})]


@pytest.mark.parametrize("fmt", sorted(FORCED))
def test_single_call_grammar_refuses_a_second_call(tokenizer, fmt: str) -> None:
    grammar = tool_grammar(fmt, TOOLS, parallel=False)
    assert not _accepts(tokenizer, grammar, FORCED[fmt])


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}\n</tool_call>',  # enum
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',  # required
        '<tool_call>\n{"name": "delete_all", "arguments": {}}\n</tool_call>',  # unknown tool
        "I will not call a tool.",
    ],
)
def test_forced_call_grammar_refuses_wrong_calls(tokenizer, text: str) -> None:
    assert not _accepts(tokenizer, tool_grammar("hermes", TOOLS, parallel=True), text)


def test_markup_formats_are_forced_in_hermes_syntax() -> None:
    for fmt in ("qwen3_coder", "glm", "gemma", "function_gemma", "pythonic"):
        assert forced_format(fmt) == "hermes"
    assert forced_format("harmony") == "harmony"


def test_auto_with_response_format_allows_a_call_or_the_answer(tokenizer) -> None:
    grammar = tool_grammar("hermes", TOOLS, parallel=False, answer_schema={"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    assert _accepts(tokenizer, grammar, '{"a": 1}')
    assert _accepts(tokenizer, grammar, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert not _accepts(tokenizer, grammar, "plain text")


def test_json_grammar_is_compact_and_enforces_the_schema(tokenizer) -> None:
    grammar = json_grammar({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x"]}}, "required": ["a", "b"], "additionalProperties": False})
    assert _accepts(tokenizer, grammar, '{"a": 1, "b": "x"}')
    assert not _accepts(tokenizer, grammar, '{"a": 1}')
    assert not _accepts(tokenizer, grammar, '{\n  "a": 1, "b": "x"}')  # no wandering whitespace


def test_unsupported_schema_keys_are_named() -> None:
    assert "not" in (validate_grammar(json_grammar({"type": "object", "not": {}})) or "")
    assert validate_grammar(json_grammar({"type": "object", "properties": {"d": {"type": "string", "format": "date-time"}}})) is None


def test_schema_depth() -> None:
    assert schema_depth({}) == 1
    assert schema_depth({"a": {"b": [1]}}) == 4


def test_tools_described_for_templates_without_tools() -> None:
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {}}}]
    messages = describe_tools([{"role": "user", "content": "hi"}], tools)
    assert messages[0]["role"] == "system" and '"name": "get_time"' in messages[0]["content"]
    assert "<tool_call>" in messages[0]["content"]
    with_system = describe_tools([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], tools)
    assert len(with_system) == 2 and with_system[0]["content"].startswith("Be brief.\n\n# Tools")


def test_tool_history_flattened_for_templates_without_tools() -> None:
    messages = [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "2", "type": "function", "function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "2", "content": "noon"},
    ]
    flat = flatten_tool_history(messages)
    assert [m["role"] for m in flat] == ["user", "assistant", "user"]
    _content, calls = parse_tool_calls(make_format("hermes"), flat[1]["content"])
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert flat[2]["content"] == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nnoon\n</tool_response>"


@pytest.mark.parametrize("device_path", [False, True])
@pytest.mark.parametrize(("vocab", "logits"), [(100, 100), (49152, 49152), (49153, 49153), (128, 200)])
def test_bitmask_unpacks_to_the_allowed_tokens(monkeypatch, device_path: bool, vocab: int, logits: int) -> None:
    """The mask built from llguidance's bitmask: numpy on a CPU, unpacked by MLX on a GPU (that
    path is forced here); tokens past the grammar's vocabulary are never allowed."""
    import mlx.core as mx
    import numpy as np

    from mlx_router.engine import constrain

    rng = np.random.default_rng(vocab)
    words = rng.integers(-(2**31), 2**31 - 1, size=(vocab + 31) // 32, dtype=np.int64).astype(np.int32)
    expected = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)[:logits]
    expected = np.pad(expected, (0, logits - expected.size))
    if device_path:
        monkeypatch.setattr(constrain.mx, "default_device", lambda: mx.gpu)
    got = np.array(constrain._unpack(words, logits))
    assert got.dtype == np.bool_ and got.shape == (1, logits)
    assert (got[0] == expected).all()
    rows = np.array(constrain._unpack(np.stack([words, ~words]), logits))  # a batch of bitmasks
    assert (rows[0] == expected).all() and (rows[1][: min(vocab, logits)] == ~expected[: min(vocab, logits)]).all()
    assert not rows[1][vocab:].any()


def test_client_cannot_turn_free_whitespace_back_on(tokenizer) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "x-guidance": {"whitespace_flexible": True}}
    assert not _accepts(tokenizer, json_grammar(schema), '{\n\n\n  "a": 1}')
