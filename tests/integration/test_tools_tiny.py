"""Tools through a template that renders them (the named Qwen template on the tiny model), and
constrained decoding on a random-weight model: whatever the weights say, the grammar decides
the shape, so calls and JSON answers must validate."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from tests.openai_schemas import validate

MODEL = "tiny-qwen-template"
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 6}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMETERS}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def _post(server: Any, **body: Any) -> dict[str, Any]:
    with server.client() as client:
        response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 300, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_template_renders_the_tools(tiny_server: Any) -> None:
    plain = _post(tiny_server, max_tokens=1)["usage"]["prompt_tokens"]
    with_tools = _post(tiny_server, max_tokens=1, tools=[WEATHER])["usage"]["prompt_tokens"]
    assert with_tools > plain + 20  # the tools' JSON is in the prompt


def test_named_tool_choice_gives_a_valid_call(tiny_server: Any) -> None:
    body = _post(tiny_server, tools=[TIME, WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=1.0, seed=3)
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMETERS)


def test_required_tool_choice_streams_a_valid_call(tiny_server: Any) -> None:
    client = tiny_server.openai()
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
        max_tokens=300, temperature=0, stream=True,
    )
    name, arguments, content, finish = "", "", "", None
    for chunk in stream:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or ():
            name += piece.function.name or ""
            arguments += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (content, finish) == ("", "tool_calls")
    assert name in ("get_weather", "get_time")
    parsed = json.loads(arguments)
    if name == "get_weather":
        jsonschema.validate(parsed, PARAMETERS)


def test_json_schema_answer_from_random_weights(tiny_server: Any) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}}, "required": ["ok", "n"], "additionalProperties": False}
    body = _post(tiny_server, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    content = body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop", body
    jsonschema.validate(json.loads(content), schema)


def test_constrained_sequences_share_a_batch_that_changes_under_them(tiny_model_dir: Any) -> None:
    """The constraint group keeps every sequence on its own grammar while the batch changes:
    one ends by a stop string mid-answer, one is cancelled, one joins late, one is free text;
    the others still end in valid JSON. After a failed step (fail_all) a fresh batch works."""
    from mlx_router.engine.batch import BatchScheduler
    from mlx_router.engine.lm import LMEngine
    from mlx_router.engine.types import BatchOptions, Constraint, GenerationParams, GenerationRequest

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}}, "required": ["ok", "n"], "additionalProperties": False}
    engine = LMEngine.load(str(tiny_model_dir), context_length=None, chat_template="qwen")
    scheduler = BatchScheduler(engine, BatchOptions())

    def request(name: str, *, stop: tuple[str, ...] = (), constrained: bool = True) -> GenerationRequest:
        constraint = Constraint("json", schema=json.dumps(schema)) if constrained else None
        params = GenerationParams(max_tokens=200, temperature=1.0, seed=len(name), stop=stop, constraint=constraint)
        return GenerationRequest(name, params, messages=({"role": "user", "content": "hi"},))

    for name, stop, constrained in (("a", (), True), ("stopped", ('"n"',), True), ("cancelled", (), True), ("free", (), False), ("b", (), True)):
        scheduler.add(request(name, stop=stop, constrained=constrained))
    texts: dict[str, str] = {}
    finish: dict[str, str] = {}
    steps = 0
    while scheduler.active:
        for chunk in scheduler.step():
            texts[chunk.request_id] = texts.get(chunk.request_id, "") + chunk.text
            if chunk.finish_reason is not None:
                finish[chunk.request_id] = chunk.finish_reason
        steps += 1
        if steps == 3:
            assert scheduler.cancel("cancelled") is not None
            scheduler.add(request("late"))
    assert "cancelled" not in finish and finish["stopped"] == "stop" and not texts["stopped"].endswith('"n"')
    for name in ("a", "b", "late"):
        assert finish[name] == "stop", (name, texts[name])
        jsonschema.validate(json.loads(texts[name]), schema)
    assert scheduler._group is not None and scheduler._group.members == []
    scheduler.add(request("dropped"))
    assert scheduler.fail_all() == ["dropped"] and scheduler._group.members == []
    chunks = scheduler.run_to_end(request("warm"))
    jsonschema.validate(json.loads("".join(c.text for c in chunks)), schema)


def test_a_call_cut_by_max_tokens_never_leaks_markup_into_content(tiny_server: Any) -> None:
    """tool_choice required allows several calls; max_tokens may cut the second one short.
    The complete calls are returned, the cut one's markup is not returned as content (seed 3
    cuts a second call at 100 tokens on this model; the other seeds end normally)."""
    outcomes = set()
    for seed in range(4):
        body = _post(tiny_server, tools=[WEATHER, TIME], tool_choice="required", temperature=1.0, seed=seed, max_tokens=100)
        validate(body, "CreateChatCompletionResponse")
        choice = body["choices"][0]
        message = choice["message"]
        if message.get("tool_calls"):
            assert message["content"] is None, message
        outcomes.add((choice["finish_reason"], bool(message.get("tool_calls"))))
        stream = tiny_server.openai().chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required", temperature=1.0, seed=seed,
            max_tokens=100, stream=True,
        )
        content, calls = "", 0
        for chunk in stream:
            if chunk.choices:
                content += chunk.choices[0].delta.content or ""
                calls += sum(1 for piece in chunk.choices[0].delta.tool_calls or () if piece.id)
        assert calls == len(message.get("tool_calls") or [])
        assert content == (message["content"] or "")
    assert ("length", True) in outcomes, outcomes  # the case of a call cut short was exercised
