"""The Anthropic Messages and OpenAI Responses endpoints over the scripted fake engine: what
reaches the engine, the events in order, errors in each API's envelope, stored responses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlx_router.engine.types import EngineError
from tests.fakes import MODEL, FakeEngineScript
from tests.openai_schemas import validate

TOOLS_MODEL = {MODEL: {"supports_tools": True}}
CALL = ("Sure.", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def message_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
    body.update(overrides)
    return body


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event with a name."""
    events = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        name = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = next((line[6:] for line in lines if line.startswith("data: ")), None)
        if name is not None and data is not None:
            events.append((name, json.loads(data)))
    return events


async def _app(make_app: Any, tmp_path: Path, chunks: tuple[str, ...] = ("Hello", ",", " world", "!"), **kw: Any) -> Any:
    kw.setdefault("models", TOOLS_MODEL)
    server = {"responses_store_path": str(tmp_path / "responses.sqlite3"), **kw.pop("server", {})}
    return await make_app(FakeEngineScript(chunks=chunks, **kw.pop("script", {})), server=server, **kw)


# ---------------------------------------------------------------------- Anthropic Messages


async def test_message_translates_system_blocks_tools_and_history(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path)
    body = message_body(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "use the tool", "signature": "x"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "And now?"},
                ],
            },
        ],
        tools=[WEATHER_TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        thinking={"type": "adaptive"},
        context_management={"edits": []},
        metadata={"user_id": "u"},
        temperature=0.2,
        top_k=5,
    )
    response = await harness.client.post("/v1/messages?beta=true", json=body)
    assert response.status_code == 200, response.text
    request = harness.factory.requests[0]
    roles = [m["role"] for m in request.messages]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert request.messages[0]["content"] == "Be brief."
    assert request.messages[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert request.messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"}
    assert [t["function"]["name"] for t in request.tools] == ["get_weather"]
    assert request.chat_template_kwargs == {"enable_thinking": True}
    assert request.params.temperature == 0.2 and request.params.top_k == 5
    warnings = json.loads(response.headers["X-MLX-Router-Warnings"])
    assert any("context_management" in w for w in warnings)
    assert any("web_search_20250305" in w for w in warnings)
    assert any("cache_control" in w for w in warnings)
    assert not any("metadata" in w for w in warnings)
    message = response.json()
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert message["content"] == [{"type": "text", "text": "Hello, world!"}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] == 7 and message["usage"]["output_tokens"] == 4


async def test_message_max_tokens_beyond_the_limit_is_clamped(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path, defaults={"max_tokens_limit": 3})
    response = await harness.client.post("/v1/messages", json=message_body(max_tokens=32000))
    assert response.status_code == 200, response.text
    assert harness.factory.requests[0].params.max_tokens == 3
    assert response.json()["stop_reason"] == "max_tokens"


async def test_message_tool_call_streams_blocks_in_order(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path, chunks=CALL)
    response = await harness.client.post("/v1/messages", json=message_body(tools=[WEATHER_TOOL], stream=True))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert [block["type"] for block in starts] == ["text", "tool_use"]
    assert starts[1]["id"] and starts[1]["name"] == "get_weather" and starts[1]["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == {"city": "Paris"}
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 2
    # The same answer without streaming.
    message = (await harness.client.post("/v1/messages", json=message_body(tools=[WEATHER_TOOL]))).json()
    assert message["stop_reason"] == "tool_use"
    assert message["content"][1]["type"] == "tool_use" and message["content"][1]["input"] == {"city": "Paris"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "any"}, "required"), ({"type": "tool", "name": "get_weather"}, "get_weather"), ({"type": "none"}, None)],
)
async def test_message_tool_choice(make_app: Any, tmp_path: Path, choice: dict[str, Any], expected: str | None) -> None:
    harness = await _app(make_app, tmp_path)
    response = await harness.client.post("/v1/messages", json=message_body(tools=[WEATHER_TOOL], tool_choice=choice))
    assert response.status_code == 200, response.text
    request = harness.factory.requests[0]
    if expected is None:
        assert request.tools is None and request.params.constraint is None
    else:
        assert request.params.constraint is not None and request.params.constraint.kind == "tools"
        assert [json.loads(t)["name"] for t in request.params.constraint.tools] == ["get_weather"]


async def test_message_errors_use_the_anthropic_envelope(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path)
    cases = [
        (message_body(max_tokens=None), 400, "invalid_request_error", "max_tokens"),
        (message_body(model="nope"), 404, "not_found_error", "nope"),
        (message_body(messages=[]), 400, "invalid_request_error", "messages"),
    ]
    for body, status, kind, words in cases:
        body = {k: v for k, v in body.items() if v is not None}
        response = await harness.client.post("/v1/messages", json=body)
        assert response.status_code == status, response.text
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == kind and words in error["error"]["message"]
    # The OpenAI routes keep theirs.
    response = await harness.client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert response.json()["error"]["code"] == "model_not_found"


async def test_message_auth_by_x_api_key(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path, server={"api_key": "sekret"})
    refused = await harness.client.post("/v1/messages", json=message_body())
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    wrong = await harness.client.post("/v1/messages", json=message_body(), headers={"x-api-key": "nope"})
    assert wrong.status_code == 401
    for headers in ({"x-api-key": "sekret"}, {"Authorization": "Bearer sekret"}):
        assert (await harness.client.post("/v1/messages", json=message_body(), headers=headers)).status_code == 200
    # Other routes take the same key either way.
    assert (await harness.client.get("/v1/models", headers={"x-api-key": "sekret"})).status_code == 200


async def test_message_stream_failure_is_an_error_event(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path, script={"error_after": 2, "error": EngineError("out_of_memory", "no room")})
    response = await harness.client.post("/v1/messages", json=message_body(stream=True))
    events = sse_events(response.text)
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]


async def test_count_tokens_equals_input_tokens(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path)
    body = message_body(system="Be brief.", tools=[WEATHER_TOOL])
    counted = await harness.client.post("/v1/messages/count_tokens", json={k: v for k, v in body.items() if k != "max_tokens"})
    assert counted.status_code == 200, counted.text
    message = (await harness.client.post("/v1/messages", json=body)).json()
    assert counted.json() == {"input_tokens": message["usage"]["input_tokens"]}
    (client,) = harness.factory.clients
    assert [r.tools for r in client.counted] == [harness.factory.requests[0].tools]
    assert len(harness.factory.requests) == 1  # the count was tokenized only, never admitted


# ---------------------------------------------------------------------- OpenAI Responses


def response_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "input": "Hi"}
    body.update(overrides)
    return body


FUNCTION_TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER_TOOL["input_schema"], "strict": True}


async def test_response_is_valid_and_stored(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path)
    response = await harness.client.post("/v1/responses", json=response_body(instructions="Be brief.", metadata={"k": "v"}))
    assert response.status_code == 200, response.text
    body = response.json()
    validate(body, "Response")
    assert body["status"] == "completed" and body["output"][0]["content"][0]["text"] == "Hello, world!"
    assert body["usage"]["input_tokens"] == 7 and body["usage"]["output_tokens"] == 4
    assert harness.factory.requests[0].messages[0] == {"role": "system", "content": "Be brief."}
    stored = await harness.client.get(f"/v1/responses/{body['id']}")
    assert stored.status_code == 200 and stored.json() == body
    items = (await harness.client.get(f"/v1/responses/{body['id']}/input_items")).json()
    validate(items, "ResponseItemList")
    assert [item["content"][0]["text"] for item in items["data"]] == ["Hi"]
    # The next turn starts from the stored conversation; instructions are not carried over.
    follow = (await harness.client.post("/v1/responses", json=response_body(input="More", previous_response_id=body["id"]))).json()
    validate(follow, "Response")
    assert [(m["role"], m["content"]) for m in harness.factory.requests[1].messages] == [
        ("user", "Hi"),
        ("assistant", "Hello, world!"),
        ("user", "More"),
    ]
    deleted = await harness.client.delete(f"/v1/responses/{body['id']}")
    assert deleted.json() == {"id": body["id"], "object": "response", "deleted": True}
    for method, path in (("GET", body["id"]), ("DELETE", body["id"]), ("GET", f"{body['id']}/input_items")):
        missing = await harness.client.request(method, f"/v1/responses/{path}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    unknown = await harness.client.post("/v1/responses", json=response_body(previous_response_id="resp_nope"))
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "previous_response_id"


async def test_input_tokens_counts_a_response_request_without_running_it(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path, defaults={"model": MODEL})
    first = (await harness.client.post("/v1/responses", json=response_body(instructions="Be brief."))).json()
    body = {"model": MODEL, "input": "More", "instructions": "Be brief.", "previous_response_id": first["id"], "personality": "x",
            "temperature": "hot"}  # a response's field a count does not use: reported, never read
    counted = await harness.client.post("/v1/responses/input_tokens", json=body)
    assert counted.status_code == 200, counted.text
    validate(counted.json(), "TokenCountsResource")
    assert counted.json() == {"object": "response.input_tokens", "input_tokens": first["usage"]["input_tokens"]}
    assert "personality" in counted.headers["x-mlx-router-warnings"]
    assert "temperature" in counted.headers["x-mlx-router-warnings"]
    (client,) = harness.factory.clients
    assert [(m["role"], m["content"]) for m in client.counted[0].messages] == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello, world!"), ("user", "More"),
    ]
    assert len(harness.factory.requests) == 1  # counted, never admitted
    without_model = await harness.client.post("/v1/responses/input_tokens", json={"input": "Hi"})
    assert without_model.status_code == 200 and client.counted[-1].messages == ({"role": "user", "content": "Hi"},)
    odd_items = [{"type": ""}, {"type": "x", "v": 1}, {"role": "user", "content": "Hi"}]
    odd = await harness.client.post("/v1/responses/input_tokens", json={"input": odd_items})
    assert odd.status_code == 200, odd.text  # items of unknown types are reported, as a response request reports them
    assert client.counted[-1].messages == ({"role": "user", "content": "Hi"},) and odd.headers["x-mlx-router-warnings"]
    for bad, status, param in (
        ({"input": "Hi", "tools": [None]}, 400, "tools[0]"),
        ({"model": "no-such-model", "input": "Hi"}, 404, "model"),
        ({"input": 5}, 400, "input"),
    ):
        refused = await harness.client.post("/v1/responses/input_tokens", json=bad)
        assert refused.status_code == status, refused.text
        validate(refused.json(), "ErrorResponse")
        assert refused.json()["error"]["param"] == param, refused.text
    created = await harness.client.post("/v1/responses", json=response_body(tools=[None]))
    assert created.status_code == 400 and created.json()["error"]["param"] == "tools[0]", created.text
    assert created.json()["error"]["message"] == "Invalid value for tools[0]: a tool must be an object"
    no_default = await _app(make_app, tmp_path / "other")
    refused = await no_default.client.post("/v1/responses/input_tokens", json={"input": "Hi"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
    assert refused.headers["x-should-retry"] == "false"


async def test_response_store_false_keeps_nothing(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path)
    body = (await harness.client.post("/v1/responses", json=response_body(store=False))).json()
    assert body["store"] is False
    assert (await harness.client.get(f"/v1/responses/{body['id']}")).status_code == 404


async def test_response_stream_events_validate_in_order(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path, chunks=CALL)
    body = response_body(
        stream=True,
        tools=[FUNCTION_TOOL, {"type": "web_search"}, {"type": "namespace", "name": "mcp", "tools": []}],
        include=["reasoning.encrypted_content"],
        reasoning={"summary": "auto"},
        prompt_cache_key="k",
        store=False,
    )
    response = await harness.client.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    warnings = json.loads(response.headers["X-MLX-Router-Warnings"])
    assert any("web_search" in w for w in warnings) and any("namespace" in w for w in warnings)
    events = sse_events(response.text)
    for _, data in events:
        validate(data, "ResponseStreamEvent")
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    names = [name for name, _ in events]
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert names[-1] == "response.completed"
    assert "response.function_call_arguments.done" in names and "response.output_text.done" in names
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    call = final["output"][1]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert harness.factory.requests[0].tools is not None and len(harness.factory.requests[0].tools) == 1


async def test_response_function_call_round_trip_and_format(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path)
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": None},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = response_body(input=items, tools=[FUNCTION_TOOL], text={"format": {"type": "json_schema", "name": "a", "schema": schema}})
    response = await harness.client.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    validate(response.json(), "Response")
    request = harness.factory.requests[0]
    assert [m["role"] for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert request.messages[3]["tool_call_id"] == "call_1"
    assert request.params.constraint is not None and json.loads(request.params.constraint.schema) == schema


async def test_response_incomplete_at_max_output_tokens(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path)
    body = (await harness.client.post("/v1/responses", json=response_body(max_output_tokens=2))).json()
    validate(body, "Response")
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_response_stream_failure_ends_with_failed(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path, script={"error_after": 2})
    events = sse_events((await harness.client.post("/v1/responses", json=response_body(stream=True))).text)
    for _, data in events:
        validate(data, "ResponseStreamEvent")
    assert [name for name, _ in events][-2:] == ["error", "response.failed"]


THINKING = ("<think>", "Paris is", " the capital.", "</think>", "Paris.")


async def test_reasoning_becomes_thinking_blocks_and_reasoning_items(make_app: Any, tmp_path: Path) -> None:
    models = {MODEL: {"supports_tools": True, "reasoning_response": "enable"}}
    harness = await _app(make_app, tmp_path, chunks=THINKING, models=models)
    message = (await harness.client.post("/v1/messages", json=message_body(thinking={"type": "enabled", "budget_tokens": 1024}))).json()
    thinking, text = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "Paris is the capital." and thinking["signature"]
    assert text == {"type": "text", "text": "Paris."}
    events = sse_events((await harness.client.post("/v1/messages", json=message_body(stream=True))).text)
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert deltas.index("signature_delta") < deltas.index("text_delta")
    assert deltas.count("signature_delta") == 1 and deltas[0] == "thinking_delta"
    response = (await harness.client.post("/v1/responses", json=response_body(reasoning={"effort": "low", "summary": "auto"}))).json()
    validate(response, "Response")
    reasoning, answer = response["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [{"type": "summary_text", "text": "Paris is the capital."}]
    assert answer["content"][0]["text"] == "Paris."
    assert harness.factory.requests[-1].chat_template_kwargs == {"reasoning_effort": "low"}
    stream = sse_events((await harness.client.post("/v1/responses", json=response_body(stream=True))).text)
    for _, data in stream:
        validate(data, "ResponseStreamEvent")
    names = [name for name, _ in stream]
    assert names.index("response.reasoning_summary_text.done") < names.index("response.output_text.delta")


async def test_images_reach_the_media_path(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body = message_body(messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}])
    refused = await harness.client.post("/v1/messages", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error" and "cannot read images" in refused.json()["error"]["message"]
    # An image a tool returned (Claude Code's Read on a picture) goes to the user turn after the result.
    history = [
        {"role": "user", "content": "Look at x.png"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "x.png"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "x.png"}, image]}]},
    ]
    refused = await harness.client.post("/v1/messages", json=message_body(messages=history, tools=[WEATHER_TOOL]))
    assert refused.status_code == 400 and "cannot read images" in refused.json()["error"]["message"]
    part = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    refused = await harness.client.post("/v1/responses", json=response_body(input=[{"role": "user", "content": [part]}]))
    assert refused.status_code == 400 and "cannot read images" in refused.json()["error"]["message"]


# ---------------------------------------------------------------------- gaps closed after the first round

CALL_PIECES = ("Sure.", "<tool_call>\n", '{"name": "get_weather", ', '"arguments": {"ci', 'ty": "Pa', 'ris", "da', 'ys": 3}}', "\n</tool_call>")


async def test_call_arguments_stream_as_they_are_written(make_app: Any, tmp_path: Path) -> None:
    """A call written over several chunks reaches Claude Code as several input_json_delta events
    and Codex as several function_call_arguments.delta events, one per chunk of arguments,
    while chat completions still sends a call's arguments in one delta."""
    harness = await _app(make_app, tmp_path, chunks=CALL_PIECES)
    events = sse_events((await harness.client.post("/v1/messages", json=message_body(tools=[WEATHER_TOOL], stream=True))).text)
    partial = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"]
    assert partial == ['{"ci', 'ty": "Pa', 'ris", "da', 'ys": 3}']
    stop = next(d for n, d in events if n == "content_block_stop" and d["index"] == 1)
    assert events.index(("content_block_stop", stop)) > max(i for i, (n, _) in enumerate(events) if n == "content_block_delta")

    events = sse_events((await harness.client.post("/v1/responses", json=response_body(tools=[FUNCTION_TOOL], stream=True))).text)
    for _, data in events:
        validate(data, "ResponseStreamEvent")
    deltas = [d["delta"] for n, d in events if n == "response.function_call_arguments.delta"]
    assert deltas == ['{"ci', 'ty": "Pa', 'ris", "da', 'ys": 3}']
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == {"city": "Paris", "days": 3}

    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}]}
    text = (await harness.client.post("/v1/chat/completions", json=chat)).text
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    pieces = [c["function"].get("arguments") for ch in chunks for choice in ch["choices"] for c in choice["delta"].get("tool_calls") or ()]
    assert pieces == ["", '{"city": "Paris", "days": 3}']


THINK_MODEL = {MODEL: {"supports_tools": True}}  # reasoning_response unset: chat leaves reasoning in the text


async def test_thinking_asked_for_is_returned_whatever_the_model_setting(make_app: Any, tmp_path: Path) -> None:
    harness = await _app(make_app, tmp_path, chunks=THINKING, models=THINK_MODEL)
    message = (await harness.client.post("/v1/messages", json=message_body(thinking={"type": "adaptive"}))).json()
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]
    assert message["content"][0]["thinking"] == "Paris is the capital." and message["content"][1]["text"] == "Paris."
    disabled = (await harness.client.post("/v1/messages", json=message_body(thinking={"type": "disabled"}))).json()
    assert disabled["content"] == [{"type": "text", "text": "Paris."}]
    events = sse_events((await harness.client.post("/v1/messages", json=message_body(thinking={"type": "disabled"}, stream=True))).text)
    assert [d["delta"] for n, d in events if n == "content_block_delta"] == [{"type": "text_delta", "text": "Paris."}]
    response = (await harness.client.post("/v1/responses", json=response_body(reasoning={"effort": "high"}))).json()
    assert [item["type"] for item in response["output"]] == ["reasoning", "message"]
    assert response["output"][0]["summary"][0]["text"] == "Paris is the capital."
    silent = (await harness.client.post("/v1/responses", json=response_body(reasoning={"effort": "none"}))).json()
    assert [item["type"] for item in silent["output"]] == ["message"]
    assert silent["output"][0]["content"][0]["text"] == "Paris."
    # Not asked: the model's setting, as chat completions does (here the text keeps the markup).
    plain = (await harness.client.post("/v1/messages", json=message_body())).json()
    assert plain["content"] == [{"type": "text", "text": "<think>Paris is the capital.</think>Paris."}]
    chat = (await harness.client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})).json()
    assert chat["choices"][0]["message"]["content"] == "<think>Paris is the capital.</think>Paris."


@pytest.mark.parametrize(
    "models,defaults",
    [({MODEL: {"supports_tools": False}}, {}), (TOOLS_MODEL, {"enable_function_calling": False})],
    ids=["model-without-tools", "function-calling-off"],
)
async def test_tools_that_cannot_be_used_are_dropped_with_a_warning(
    make_app: Any, tmp_path: Path, models: dict[str, Any], defaults: dict[str, Any]
) -> None:
    harness = await _app(make_app, tmp_path, chunks=CALL, models=models, defaults=defaults)
    body = message_body(tools=[WEATHER_TOOL], tool_choice={"type": "any"})
    response = await harness.client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    warnings = json.loads(response.headers["X-MLX-Router-Warnings"])
    assert any("get_weather" in w and "dropped" in w for w in warnings), warnings
    assert [b["type"] for b in response.json()["content"]] == ["text"]  # the markup is text: no tools were offered
    assert harness.factory.requests[-1].tools is None and harness.factory.requests[-1].params.constraint is None
    response = await harness.client.post("/v1/responses", json=response_body(tools=[FUNCTION_TOOL], stream=True))
    assert response.status_code == 200, response.text
    assert any("get_weather" in w for w in json.loads(response.headers["X-MLX-Router-Warnings"]))
    assert harness.factory.requests[-1].tools is None
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}]}
    refused = await harness.client.post("/v1/chat/completions", json=chat)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools"


@pytest.mark.parametrize(
    "prefix_cache_bytes,prompt_tokens,written",
    [(None, 100, 100), (0, 100, 0), (None, 63, 0)],
    ids=["cache-on", "cache-off", "shorter-than-a-block"],
)
async def test_cache_creation_tokens_are_the_prompt_written_to_the_cache(
    make_app: Any, tmp_path: Path, prefix_cache_bytes: int | None, prompt_tokens: int, written: int
) -> None:
    """Every finished sequence of at least one block (64 tokens) is kept in the prefix cache:
    the prompt tokens not read from it are written, when the model's prefix cache is on."""
    models = {MODEL: {"supports_tools": True, "prefix_cache_bytes": prefix_cache_bytes}}
    harness = await _app(make_app, tmp_path, models=models, script={"prompt_tokens": prompt_tokens})
    usage = (await harness.client.post("/v1/messages", json=message_body())).json()["usage"]
    assert usage["cache_creation_input_tokens"] == written and usage["input_tokens"] == prompt_tokens
    events = sse_events((await harness.client.post("/v1/messages", json=message_body(stream=True))).text)
    assert events[0][1]["message"]["usage"]["cache_creation_input_tokens"] == written
    response = (await harness.client.post("/v1/responses", json=response_body())).json()
    validate(response, "Response")
    assert response["usage"]["input_tokens_details"]["cache_write_tokens"] == written


TWO_CALLS = (
    "<tool_call>\n", '{"name": "get_weather", "arguments": {"city": ', '"Paris"}}\n</tool_call>\n',
    "<tool_call>\n", '{"name": "get_weather", "arguments": {"city": ', '"Rome"}}\n</tool_call>',
)


@pytest.mark.parametrize("parallel", [True, False])
async def test_streamed_calls_follow_disable_parallel_tool_use(make_app: Any, tmp_path: Path, parallel: bool) -> None:
    harness = await _app(make_app, tmp_path, chunks=TWO_CALLS)
    choice = {"type": "auto", "disable_parallel_tool_use": not parallel}
    events = sse_events((await harness.client.post("/v1/messages", json=message_body(tools=[WEATHER_TOOL], tool_choice=choice, stream=True))).text)
    blocks = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in blocks] == ["tool_use"] * (2 if parallel else 1)
    assert len({b["id"] for b in blocks}) == len(blocks)
    for index in range(len(blocks)):
        partial = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == index]
        assert len(partial) == 2 and json.loads("".join(partial)) == {"city": ["Paris", "Rome"][index]}
    message = (await harness.client.post("/v1/messages", json=message_body(tools=[WEATHER_TOOL], tool_choice=choice))).json()
    assert [b["input"] for b in message["content"]] == [{"city": "Paris"}, {"city": "Rome"}][: 2 if parallel else 1]
    assert message["stop_reason"] == "tool_use"
