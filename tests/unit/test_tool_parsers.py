"""Every tool-call format from one table: model text -> (content, calls), for the complete text
and for the same text streamed cut at every position and one character at a time."""

from __future__ import annotations

import json

import pytest

from mlx_router.text.tools import FORMATS, ToolCallStream, detect_tool_format, make_format, parse_tool_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}, "zip": {"type": "string"},
    "note": {"type": ["string", "null"]}, "ref": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "level": {"enum": ["1", "2"]}}}}}
TOOLS = [WEATHER]
W = ("get_weather", {"city": "Paris", "days": 3})
T = ("get_time", {})

DS_B, DS_E = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CB, DS_CE, DS_S = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"

CASES = [
    # (format, model text, expected content, expected calls)
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>', "", [W]),
    ("hermes", ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>\n'
                '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'), "Let me check.", [W, T]),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"days\\": 3}"}</tool_call>', "", [W]),
    ("hermes", "No tools needed: 2 < 3 and <b>bold</b>.", "No tools needed: 2 < 3 and <b>bold</b>.", []),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', []),
    ("hermes", "<tool_call>not json</tool_call> after", "<tool_call>not json</tool_call> after", []),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n', "", [W]),  # end tag cut by EOS
    # an argument that mentions the end marker (a coding agent writing about tool calls)
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a</tool_call>b", "days": 3}}\n</tool_call>', "", [("get_weather", {"city": "a</tool_call>b", "days": 3})]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a</tool_call>b', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a</tool_call>b', []),
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>", "", [W]),
    ("qwen3_coder", "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n</function>\n</tool_call>", "Sure.", [W, T]),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=zip>\n01234\n</parameter>\n</function>\n</tool_call>", "", [("get_weather", {"zip": "01234"})]),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n<parameter=days>\n3\n</function>\n</tool_call>", "", [W]),
    # strings stay strings whatever they look like: nullable, anyOf and enum strings too; "null" is null where allowed
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=note>\n123\n</parameter>\n<parameter=ref>\n42\n</parameter>\n<parameter=level>\n1\n</parameter>\n</function>\n</tool_call>", "", [("get_weather", {"note": "123", "ref": "42", "level": "1"})]),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=note>\nnull\n</parameter>\n</function>\n</tool_call>", "", [("get_weather", {"note": None})]),
    # a multi-line value with "<" inside; a value Python reads as a set or bytes is kept as text
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nif a < b:\n    print('<x>')\n</parameter>\n<parameter=other>\n{1, 2}\n</parameter>\n<parameter=raw>\nb'x'\n</parameter>\n</function>\n</tool_call>", "", [("get_weather", {"city": "if a < b:\n    print('<x>')", "other": "{1, 2}", "raw": "b'x'"})]),
    # two functions in one region
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n<function=get_time>\n</function>\n</tool_call>", "", [W, T]),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}', "", [W]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}; {"name": "get_time", "parameters": {}}', "", [W, T]),
    ("llama3_json", '  {"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}\n{"name": "get_time", "parameters": {}}', "", [W, T]),
    # as Llama 3.x also writes it: a space or a newline after the brace, <|eom_id|> after a python_tag call
    ("llama3_json", '{ "name": "get_weather", "parameters": {"city": "Paris", "days": 3}}', "", [W]),
    ("llama3_json", '{\n  "name": "get_weather",\n  "parameters": {"city": "Paris", "days": 3}\n}', "", [W]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}<|eom_id|>', "", [W]),
    ("llama3_json", 'The answer is {"a": 1}.', 'The answer is {"a": 1}.', []),
    ("llama3_json", '{"key": "value"}', '{"key": "value"}', []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": ', '{"name": "get_weather", "parameters": {"city": ', []),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}, {"name": "get_time", "arguments": {}}]', "", [W, T]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}[TOOL_CALLS]get_time[ARGS]{}', "", [W, T]),
    ("mistral", 'Checking.[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris", "days": 3}', "Checking.", [W]),
    ("mistral", "[TOOL_CALLS]get_weather[ARGS]{\"city\"", "[TOOL_CALLS]get_weather[ARGS]{\"city\"", []),
    ("deepseek", f'{DS_B}{DS_CB}function{DS_S}get_weather\n```json\n{{"city": "Paris", "days": 3}}\n```{DS_CE}{DS_CB}function{DS_S}get_time\n```json\n{{}}\n```{DS_CE}{DS_E}', "", [W, T]),
    ("deepseek", f'Hi{DS_B}{DS_CB}get_weather{DS_S}{{"city": "Paris", "days": 3}}{DS_CE}{DS_E}', "Hi", [W]),
    ("deepseek", f'{DS_B}{DS_CB}get_weather{DS_S}{{"city":', f'{DS_B}{DS_CB}get_weather{DS_S}{{"city":', []),
    ("harmony", '<|start|>to=functions.get_weather<|message|>{"city": "Paris", "days": 3}<|call|>', "", [W]),
    ("harmony", 'Done <|start|>to=functions.get_time<|message|>{}<|call|>', "Done", [T]),
    ("glm", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>", "", [W]),
    ("glm", "<tool_call>get_time\n</tool_call><tool_call>get_weather<arg_key>metric</arg_key><arg_value>true</arg_value></tool_call>", "", [T, ("get_weather", {"metric": True})]),
    ("glm", '<tool_call>get_weather\n<arg_key>other</arg_key>\n<arg_value>{"k": [1, 2]}</arg_value>\n<arg_key>city</arg_key>\n<arg_value>{"k": 1}</arg_value>\n</tool_call>', "", [("get_weather", {"other": {"k": [1, 2]}, "city": '{"k": 1}'})]),
    ("glm", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_val", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_val", []),
    ("gemma", '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>', "", [W]),
    ("gemma", '<|tool_call>call:get_weather{city:<|"|>a, b: {c}<|"|>}<tool_call|><|tool_call>call:get_time{}<tool_call|>', "", [("get_weather", {"city": "a, b: {c}"}), T]),
    ("gemma", "<|tool_call>call:get_weather{city:<|\"|>Par", "<|tool_call>call:get_weather{city:<|\"|>Par", []),
    ("function_gemma", "<start_function_call>call:get_weather{city:<escape>Paris<escape>,days:3}<end_function_call>", "", [W]),
    ("gemma", '<|tool_call>call:get_weather{city:"a,days:b",days:3}<tool_call|>', "", [("get_weather", {"city": "a,days:b", "days": 3})]),
    ("pythonic", '[get_weather(city="Paris", days=3), get_time()]', "", [W, T]),
    ("pythonic", '<|python_start|>[get_weather(city="Paris", days=3)]<|python_end|>', "", [W]),
    ("pythonic", "[1] is a citation.", "[1] is a citation.", []),
    ("pythonic", '[get_weather(city="Paris", metric=true, zip=null), get_time()]', "", [("get_weather", {"city": "Paris", "metric": True, "zip": None}), T]),
    ("pythonic", "[get_weather(city=['a', {'b': false}])]", "", [("get_weather", {"city": ["a", {"b": False}]})]),
    ("pythonic", "[get_weather(city=paris)]", "[get_weather(city=paris)]", []),
    ("pythonic", '[get_weather(city="Par', '[get_weather(city="Par', []),
    ("pythonic", "[__import__('os').system('x')]", "[__import__('os').system('x')]", []),
    ("pythonic", "[__import__('os').system()]", "[__import__('os').system()]", []),  # a call's name is a (dotted) name
    ("pythonic", '[get_weather(city="a\\"b", days=[1, {"k": [2, None]}]), tools.get_time()]', "", [("get_weather", {"city": 'a"b', "days": [1, {"k": [2, None]}]}), ("tools.get_time", {})]),
]


def _expected(calls):
    return [(name, arguments) for name, arguments in calls]


def _calls(parsed):
    return [(c.name, json.loads(c.arguments)) for c in parsed]


def _ids(case):
    return f"{case[0]}-{abs(hash(case[1])) % 10_000}"


@pytest.mark.parametrize("fmt,text,content,calls", CASES, ids=[_ids(c) for c in CASES])
def test_complete_text(fmt, text, content, calls):
    got_content, got_calls = parse_tool_calls(make_format(fmt, TOOLS), text)
    assert got_content == content
    assert _calls(got_calls) == _expected(calls)
    ids = [c.id for c in got_calls]
    assert all(ids) and len(set(ids)) == len(ids)  # the model's own ids (Mistral) are kept


def _stream(fmt: str, pieces: list[str]):
    stream = ToolCallStream(make_format(fmt, TOOLS))
    content, calls = [], []
    for piece in pieces:
        c, k = stream.feed(piece)
        content.append(c)
        calls.extend(k)
    c, k = stream.flush()
    return "".join(content) + c, calls + k


@pytest.mark.parametrize("fmt,text,content,calls", CASES, ids=[_ids(c) for c in CASES])
def test_streamed_cut_at_every_position(fmt, text, content, calls):
    for cut in range(len(text) + 1):
        got_content, got_calls = _stream(fmt, [text[:cut], text[cut:]])
        assert got_content == content, cut
        assert _calls(got_calls) == _expected(calls), cut
    got_content, got_calls = _stream(fmt, list(text))
    assert (got_content, _calls(got_calls)) == (content, _expected(calls))


@pytest.mark.parametrize("fmt,text,content,calls", [c for c in CASES if c[3]], ids=[_ids(c) for c in CASES if c[3]])
def test_no_markup_reaches_content_before_a_call_is_read(fmt, text, content, calls):
    """While a call streams, nothing of its markup is shown: content pieces only ever hold text
    that is also in the final content."""
    stream = ToolCallStream(make_format(fmt, TOOLS))
    shown = ""
    for ch in text:
        piece, _ = stream.feed(ch)
        shown += piece
        assert content.startswith(shown)


def test_every_format_is_in_the_table():
    assert {case[0] for case in CASES} == set(FORMATS)


@pytest.mark.parametrize(
    "template,expected",
    [
        ("{% for m in messages %}<tool_call>{{ tools }}{% endfor %}", "hermes"),
        ("<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>", "qwen3_coder"),
        ("<tool_call>{{ name }}<arg_key>k</arg_key>", "glm"),
        ("[TOOL_CALLS]", "mistral"),
        ("<｜tool▁calls▁begin｜>", "deepseek"),
        ("<|start|>assistant<|channel|>final<|message|>", "harmony"),
        ("<|tool_call>call:", "gemma"),
        ("<start_function_call>", "function_gemma"),
        ("[func_name1(params_name1=params_value1, params_name2=params_value2...)", "pythonic"),
        ("{{- '<|python_tag|>' }}", "llama3_json"),
        ("plain {{ messages }}", "hermes"),
        ({"default": "x", "tool_use": "<tool_call>"}, "hermes"),
    ],
)
def test_format_detected_from_template(template, expected):
    assert detect_tool_format(template) == expected


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown tool format"):
        make_format("nope")


def _streamed_deltas(fmt: str, text: str):
    stream = ToolCallStream(make_format(fmt, TOOLS), stream_arguments=True)
    content, calls, deltas = "", [], []
    for ch in text:
        c, k = stream.feed(ch)
        content, calls, deltas = content + c, calls + k, deltas + stream.take_deltas()
    c, k = stream.flush()
    return content + c, calls + k, deltas + stream.take_deltas()


@pytest.mark.parametrize("fmt,text,content,calls", [c for c in CASES if c[3]], ids=[_ids(c) for c in CASES if c[3]])
def test_call_deltas_add_up_to_the_calls(fmt, text, content, calls):
    """With stream_arguments, every call is also reported as deltas: the first of each names the
    function, and the arguments pieces of one id join to that call's arguments."""
    got_content, got_calls, deltas = _streamed_deltas(fmt, text)
    assert got_content == content
    assert _calls(got_calls) == _expected(calls)
    assert [d.id for d in deltas if d.name is not None] == [c.id for c in got_calls]
    for call in got_calls:
        joined = "".join(d.arguments for d in deltas if d.id == call.id)
        assert json.loads(joined or "{}") == json.loads(call.arguments)


@pytest.mark.parametrize(
    "fmt,text",
    [
        ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "note": "a}b\\"c", "days": 3}}\n</tool_call>'),
        ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}'),
        ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}'),
        ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]'),
        ("harmony", '<|start|>to=functions.get_weather<|message|>{"city": "Paris", "days": 3}<|call|>'),
    ],
)
def test_arguments_stream_while_the_call_is_written(fmt, text):
    """For these formats the arguments arrive in many pieces, each before the call's markup
    closes, and the pieces join to exactly the JSON the model wrote."""
    _, calls, deltas = _streamed_deltas(fmt, text)
    pieces = [d.arguments for d in deltas if d.arguments]
    assert len(pieces) > 10
    assert "".join(pieces) in text
    assert json.loads("".join(pieces)) == json.loads(calls[0].arguments)


def test_a_streamed_call_cut_short_stands_as_written():
    """A call whose arguments had begun streaming when the output ended is kept (its start was
    already sent), with the arguments written so far."""
    _, calls, deltas = _streamed_deltas("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Par')]
    assert "".join(d.arguments for d in deltas) == '{"city": "Par'
    # Closed but unreadable after its arguments streamed: it stands too, with those arguments.
    _, calls, deltas = _streamed_deltas("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P"}} junk</tool_call>')
    assert [(c.name, c.arguments, c.id) for c in calls] == [("get_weather", '{"city": "P"}', deltas[0].id)]


def test_formats_without_a_readable_start_give_one_delta_per_call():
    text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    _, calls, deltas = _streamed_deltas("qwen3_coder", text)
    assert [(d.id, d.name, d.arguments) for d in deltas] == [(calls[0].id, "get_weather", calls[0].arguments)]
