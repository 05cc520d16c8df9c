"""Tool calls and structured output at the API level, with a fake engine that writes scripted
model text: what reaches the engine (tools, constraints) and what the client gets back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlx_router.engine.types import Constraint
from tests.api.test_chat_api import parse_sse
from tests.fakes import MODEL, FakeEngineScript, assert_error, chat_body
from tests.openai_schemas import validate

CHAT = "/v1/chat/completions"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS_MODEL = {MODEL: {"supports_tools": True}}
# Model text cut mid-marker and mid-JSON, as tokens arrive.
TWO_CALLS = (
    "Let me check.",
    "\n<tool",
    '_call>\n{"name": "get_weather", "argu',
    'ments": {"city": "Paris"}}\n</tool_',
    "call>\n<tool_call>\n",
    '{"name": "get_time", "arguments": {}}\n</tool_call>',
)


async def _app(make_app: Any, chunks: tuple[str, ...] = TWO_CALLS, **sections: Any) -> Any:
    sections.setdefault("models", TOOLS_MODEL)
    return await make_app(FakeEngineScript(chunks=chunks), **sections)


async def test_calls_are_returned_as_tool_calls(make_app: Any) -> None:
    harness = await _app(make_app)
    response = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME]))
    assert response.status_code == 200, response.text
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Let me check."
    calls = message["tool_calls"]
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}),
        ("function", "get_time", {}),
    ]
    assert len({c["id"] for c in calls}) == 2
    [request] = harness.factory.requests
    assert [t["function"]["name"] for t in request.tools] == ["get_weather", "get_time"]
    assert request.params.constraint is None  # "auto": the model decides


async def test_streamed_calls_are_openai_shaped_and_no_markup_leaks(make_app: Any) -> None:
    harness = await _app(make_app)
    response = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], stream=True))
    assert response.status_code == 200, response.text
    chunks, _ = parse_sse(response.text)
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Let me check."
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for piece in delta.get("tool_calls") or ():
            call = calls.setdefault(piece["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.get("id") or ""
            call["name"] += piece.get("function", {}).get("name") or ""
            call["arguments"] += piece.get("function", {}).get("arguments") or ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_parallel_tool_calls_false_keeps_the_first_call(make_app: Any) -> None:
    harness = await _app(make_app)
    body = (await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], parallel_tool_calls=False))).json()
    assert [c["function"]["name"] for c in body["choices"][0]["message"]["tool_calls"]] == ["get_weather"]
    stream = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], parallel_tool_calls=False, stream=True))
    chunks, _ = parse_sse(stream.text)
    indexes = {p["index"] for c in chunks if c["choices"] for p in c["choices"][0]["delta"].get("tool_calls") or ()}
    assert indexes == {0}


async def test_malformed_call_is_content(make_app: Any) -> None:
    chunks = ("<tool_call>\n", '{"name": "get_weather", "arguments": {"city"', "\n</tool_call>")
    harness = await _app(make_app, chunks)
    body = (await harness.client.post(CHAT, json=chat_body(tools=[WEATHER]))).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == "".join(chunks)


async def test_tool_choice_none_offers_no_tools_and_reads_no_calls(make_app: Any) -> None:
    harness = await _app(make_app)
    body = (await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], tool_choice="none"))).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "".join(TWO_CALLS)
    assert harness.factory.requests[0].tools is None


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "names", "allows_several"),
    [
        ("required", None, ["get_weather", "get_time"], True),
        ("required", False, ["get_weather", "get_time"], False),
        ({"type": "function", "function": {"name": "get_time"}}, None, ["get_time"], False),
    ],
)
async def test_forced_calls_are_constrained(make_app: Any, tool_choice: Any, parallel: Any, names: list[str], allows_several: bool) -> None:
    harness = await _app(make_app)
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    response = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], tool_choice=tool_choice, **extra))
    assert response.status_code == 200, response.text
    constraint = harness.factory.requests[0].params.constraint
    assert isinstance(constraint, Constraint) and constraint.kind == "tools"
    assert [json.loads(t)["name"] for t in constraint.tools] == names
    assert constraint.parallel is allows_several
    assert constraint.schema is None


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        ({"type": "json_object"}, {"type": "object"}),
        (
            {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}},
            {"type": "object", "properties": {"name": {"type": "string"}}},
        ),
    ],
)
async def test_response_format_becomes_a_json_constraint(make_app: Any, response_format: Any, schema: Any) -> None:
    harness = await _app(make_app, ('{"name": "Paris"}',))
    response = await harness.client.post(CHAT, json=chat_body(response_format=response_format))
    assert response.status_code == 200, response.text
    constraint = harness.factory.requests[0].params.constraint
    assert constraint == Constraint("json", schema=json.dumps(schema))


async def test_auto_tools_with_response_format_allow_a_call_or_the_answer(make_app: Any) -> None:
    harness = await _app(make_app)
    await harness.client.post(CHAT, json=chat_body(tools=[WEATHER], response_format={"type": "json_object"}))
    constraint = harness.factory.requests[0].params.constraint
    assert constraint.kind == "tools" and json.loads(constraint.schema) == {"type": "object"}


UNSUPPORTED = {"type": "object", "properties": {"a": {"type": "string"}}, "not": {"required": ["a"]}}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": UNSUPPORTED}}), "response_format", ["not"]),
        (chat_body(tools=[{"type": "function", "function": {"name": "f", "parameters": UNSUPPORTED}}], tool_choice="required"), "tools[0].function.parameters", ["not"]),
        (chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": json.loads('{"items":' * 40 + "{}" + "}" * 40)}}), "response_format", ["max_schema_depth"]),
        (chat_body(response_format={"type": "json_schema"}), "response_format", ["json_schema"]),
        (chat_body(tool_choice="required"), "tool_choice", ["requires tools"]),
        (chat_body(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice", ["nope"]),
        (chat_body(tools=[WEATHER, WEATHER]), "tools", ["get_weather"]),
        (chat_body(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}), "response_format", ["tool_choice"]),
        (chat_body(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name", []),
        (chat_body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]), "tools[0].function.parameters", ['"object"']),
    ],
)
async def test_bad_tool_and_format_requests_are_400(make_app: Any, body: dict[str, Any], param: str, words: list[str]) -> None:
    harness = await _app(make_app)
    response = await harness.client.post(CHAT, json=body)
    error = assert_error(response, 400, param=param)
    for word in words:
        assert word in error["message"], error
    assert harness.factory.calls == 0  # refused before any model was loaded


async def test_a_tool_without_parameters_is_forced_with_an_empty_object(make_app: Any) -> None:
    harness = await _app(make_app, ("<tool_call>\n", '{"name": "ping", "arguments": {}}', "\n</tool_call>"))
    tool = {"type": "function", "function": {"name": "ping"}}
    body = (await harness.client.post(CHAT, json=chat_body(tools=[tool], tool_choice="required"))).json()
    assert body["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "ping", "arguments": "{}"}
    [request] = harness.factory.requests
    assert [json.loads(t) for t in request.params.constraint.tools] == [{"name": "ping", "parameters": {"type": "object"}}]
    assert request.tools == ({"type": "function", "function": {"name": "ping"}},)


async def test_unsupported_keys_are_fine_when_nothing_is_enforced(make_app: Any) -> None:
    """With tool_choice auto the schema is only shown to the model, so any schema goes."""
    harness = await _app(make_app)
    tools = [{"type": "function", "function": {"name": "f", "parameters": UNSUPPORTED}}]
    response = await harness.client.post(CHAT, json=chat_body(tools=tools))
    assert response.status_code == 200, response.text


async def test_tool_history_reaches_the_template(make_app: Any) -> None:
    harness = await _app(make_app, ("It is sunny.",))
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    body = (await harness.client.post(CHAT, json=chat_body(messages=messages, tools=[WEATHER]))).json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is sunny.", "refusal": None}
    sent = harness.factory.requests[0].messages
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}


async def test_model_tool_parser_setting_reaches_the_engine(make_app: Any) -> None:
    harness = await _app(make_app, ('[get_weather(city="Paris")]',), models={MODEL: {"supports_tools": True, "tool_parser": "pythonic"}})
    body = (await harness.client.post(CHAT, json=chat_body(tools=[WEATHER]))).json()
    assert harness.factory.requests[0].tool_format == "pythonic"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_models_not_supporting_tools_refuse_them(make_app: Any) -> None:
    harness = await make_app(models={MODEL: {"supports_tools": False}})
    response = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER]))
    error = assert_error(response, 400, param="tools")
    assert "does not support tools" in error["message"]


def _streamed(text: str) -> tuple[dict[int, str], dict[int, list[tuple[str, str]]], dict[int, str]]:
    """Per choice: content, calls ``(name, arguments)`` and finish reason of an SSE body (every
    chunk checked against the OpenAI schema)."""
    chunks, _ = parse_sse(text)
    content: dict[int, str] = {}
    calls: dict[int, dict[int, list[str]]] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        for choice in chunk["choices"]:
            index, delta = choice["index"], choice["delta"]
            content[index] = content.get(index, "") + (delta.get("content") or "")
            for piece in delta.get("tool_calls") or ():
                call = calls.setdefault(index, {}).setdefault(piece["index"], ["", ""])
                call[0] += piece["function"].get("name") or ""
                call[1] += piece["function"].get("arguments") or ""
            if choice["finish_reason"]:
                finish[index] = choice["finish_reason"]
    return content, {i: [tuple(c) for c in cs.values()] for i, cs in calls.items()}, finish  # type: ignore[misc]


async def test_a_call_cut_by_max_tokens_is_content_and_length(make_app: Any) -> None:
    """The answer ran out mid-call: the client gets the text as written and "length"."""
    harness = await _app(make_app)
    body = (await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], max_tokens=3))).json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == "".join(TWO_CALLS[:3])
    stream = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], max_tokens=3, stream=True))
    content, calls, finish = _streamed(stream.text)
    assert (content, calls, finish) == ({0: "".join(TWO_CALLS[:3])}, {}, {0: "length"})


@pytest.mark.parametrize(
    "chunks",
    [TWO_CALLS[:5], TWO_CALLS[:5] + ('{"name": "get_ti',)],
    ids=["cut-after-the-opener", "cut-mid-json"],
)
async def test_a_cut_after_a_complete_call_keeps_the_call_and_drops_the_unfinished_one(
    make_app: Any, chunks: tuple[str, ...]
) -> None:
    """A second call cut short is no answer: its markup never reaches content (streamed or not)."""
    harness = await _app(make_app, chunks=chunks + ("never sent",))
    max_tokens = len(chunks)
    body = (await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], max_tokens=max_tokens))).json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather"]
    assert choice["message"]["content"] == "Let me check."
    stream = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], max_tokens=max_tokens, stream=True))
    content, calls, finish = _streamed(stream.text)
    assert (content, calls, finish) == ({0: "Let me check."}, {0: [("get_weather", '{"city": "Paris"}')]}, {0: "length"})


async def test_several_choices_stream_their_own_calls(make_app: Any) -> None:
    harness = await _app(make_app)
    stream = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], n=2, stream=True, logprobs=True))
    assert stream.status_code == 200, stream.text
    content, calls, finish = _streamed(stream.text)
    expected = [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]
    assert content == {0: "Let me check.", 1: "Let me check."}
    assert calls == {0: expected, 1: expected}
    assert finish == {0: "tool_calls", 1: "tool_calls"}
    body = (await harness.client.post(CHAT, json=chat_body(tools=[WEATHER, TIME], n=2))).json()
    validate(body, "CreateChatCompletionResponse")
    assert [len(c["message"]["tool_calls"]) for c in body["choices"]] == [2, 2]


async def test_reasoning_then_a_call(make_app: Any) -> None:
    """Qwen3 thinks, then calls: the thought is reasoning, the call a call, nothing is content."""
    chunks = ("<think>\nI should call <tool_", "call> for this.\n</th", "ink>\n\n<tool_call>\n", '{"name": "get_time", "arguments": {}}', "\n</tool_call>")
    harness = await _app(make_app, chunks, models={MODEL: {"supports_tools": True, "reasoning_response": "enable"}})
    body = (await harness.client.post(CHAT, json=chat_body(tools=[TIME]))).json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"].strip() == "I should call <tool_call> for this."
    assert message["content"] is None
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_time"]
    stream = await harness.client.post(CHAT, json=chat_body(tools=[TIME], stream=True))
    content, calls, finish = _streamed(stream.text)
    assert (content, calls, finish) == ({0: ""}, {0: [("get_time", "{}")]}, {0: "tool_calls"})


@pytest.mark.parametrize(
    ("extra", "chunks"),
    [
        ({"response_format": {"type": "json_object"}}, ('{"city": ', '"Paris"}')),
        ({"tools": [WEATHER], "tool_choice": "required"}, ("<tool_call>\n", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "\n</tool_call>")),
    ],
)
async def test_constrained_output_after_an_open_think_block_is_the_answer(make_app: Any, monkeypatch: Any, extra: dict[str, Any], chunks: tuple[str, ...]) -> None:
    """Templates such as DeepSeek-R1's end the prompt inside ``<think>``; under a grammar the
    model writes the answer at once, so its output is the answer, not reasoning."""
    import tests.fakes
    from mlx_router.engine.types import Admission

    monkeypatch.setattr(tests.fakes, "Admission", lambda *args, **kwargs: Admission(*args, reasoning_open=True, **kwargs))
    harness = await _app(make_app, chunks, models={MODEL: {"supports_tools": True, "reasoning_response": "enable"}})
    message = (await harness.client.post(CHAT, json=chat_body(**extra))).json()["choices"][0]["message"]
    assert "reasoning_content" not in message
    if "tools" in extra:
        assert message["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    else:
        assert message["content"] == '{"city": "Paris"}'
    free = (await harness.client.post(CHAT, json=chat_body())).json()["choices"][0]["message"]
    assert free["reasoning_content"] == "".join(chunks)  # unconstrained, the open block is reasoning


@pytest.mark.parametrize("stream", [False, True])
async def test_the_log_says_the_finish_reason_returned(make_app: Any, caplog: Any, stream: bool) -> None:
    """A forced call ends with the model's stop, but the client is told tool_calls: so is the log."""
    harness = await _app(make_app, chunks=TWO_CALLS[1:4] + ("call>",))
    with caplog.at_level("INFO", logger="mlx_router.api.serving.runner"):
        response = await harness.client.post(CHAT, json=chat_body(tools=[WEATHER], tool_choice="required", stream=stream))
    assert response.status_code == 200, response.text
    assert "tool_calls" in response.text
    [line] = [r.getMessage() for r in caplog.records if "finish=" in r.getMessage()]
    assert " finish=tool_calls " in line, line
