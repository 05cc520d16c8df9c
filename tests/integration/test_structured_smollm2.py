"""Structured output and forced tool calls with the embedded SmolLM2, through the real server:
every answer must validate against its schema, one at a time and 8 at once in one batch."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import pytest

pytestmark = pytest.mark.timeout(900)

MODEL = "SmolLM2-135M-Instruct"
S = {"type": "string", "maxLength": 24}
SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("Give a city and its country.", {"type": "object", "properties": {"city": S, "country": S}, "required": ["city", "country"]}),
    ("Invent a person.", {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": False}),
    ("Is the sky blue?", {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]}),
    ("Pick a colour.", {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"]}),
    ("List three fruits.", {"type": "object", "properties": {"fruits": {"type": "array", "items": S, "minItems": 3, "maxItems": 3}}, "required": ["fruits"]}),
    ("Describe a book.", {"type": "object", "properties": {"title": S, "author": {"type": "object", "properties": {"first": S, "last": S}, "required": ["first", "last"]}}, "required": ["title", "author"]}),
    ("Rate a movie from 1 to 5.", {"type": "object", "properties": {"movie": S, "stars": {"type": "integer", "minimum": 1, "maximum": 5}}, "required": ["movie", "stars"]}),
    ("Give a temperature.", {"type": "object", "properties": {"value": {"type": "number", "minimum": -100, "maximum": 100}, "unit": {"enum": ["C", "F"]}}, "required": ["value", "unit"]}),
    ("Name two planets with their order from the sun.", {"type": "object", "properties": {"planets": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {"name": S, "order": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["name", "order"]}}}, "required": ["planets"]}),
    ("Classify the sentiment of: I love it.", {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["sentiment", "confidence"]}),
    ("Give a date.", {"type": "object", "properties": {"year": {"type": "integer", "minimum": 1900, "maximum": 2100}, "month": {"type": "integer", "minimum": 1, "maximum": 12}, "day": {"type": "integer", "minimum": 1, "maximum": 31}}, "required": ["year", "month", "day"]}),
    ("Describe a dog.", {"type": "object", "properties": {"breed": S, "size": {"enum": ["small", "medium", "large"]}, "good_with_kids": {"type": "boolean"}}, "required": ["breed", "size", "good_with_kids"], "additionalProperties": False}),
    ("Make a shopping list.", {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {"item": S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["item", "qty"]}}}, "required": ["items"]}),
    ("Give a user profile.", {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999}, "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}}, "required": ["id", "email"]}}, "required": ["user"]}),
    ("Translate hello to French.", {"type": "object", "properties": {"source": S, "target": S, "language": {"const": "French"}}, "required": ["source", "target", "language"]}),
    ("Answer yes or no: is water wet?", {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "reason": S}, "required": ["answer"]}),
    ("Give coordinates of a place.", {"type": "object", "properties": {"place": S, "lat": {"type": "number", "minimum": -90, "maximum": 90}, "lon": {"type": "number", "minimum": -180, "maximum": 180}}, "required": ["place", "lat", "lon"]}),
    ("Give an optional nickname.", {"type": "object", "properties": {"name": S, "nickname": {"anyOf": [S, {"type": "null"}]}}, "required": ["name", "nickname"]}),
    ("Describe a recipe.", {"type": "object", "properties": {"dish": S, "steps": {"type": "array", "items": S, "minItems": 1, "maxItems": 2}, "vegetarian": {"type": "boolean"}}, "required": ["dish", "steps", "vegetarian"]}),
    ("Summarise a team.", {"type": "object", "$defs": {"member": {"type": "object", "properties": {"name": S, "role": {"enum": ["lead", "dev"]}}, "required": ["name", "role"]}}, "properties": {"team": S, "members": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/member"}}}, "required": ["team", "members"]}),
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 32}}, "required": ["query"]},
    },
}


def _closed(schema: Any) -> Any:
    """The schema as OpenAI's strict mode requires it: objects allow no other properties
    (otherwise a model may add properties of any length and never finish)."""
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [_closed(item) for item in schema]
    return schema


def _json_request(client: httpx.Client, index: int) -> tuple[dict[str, Any], str]:
    prompt, schema = SCHEMAS[index][0], _closed(SCHEMAS[index][1])
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "response_format": {"type": "json_schema", "json_schema": {"name": f"s{index}", "schema": schema, "strict": True}},
            "max_tokens": 160,
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    return schema, choice["message"]["content"]


def _forced_call(client: httpx.Client, city: str) -> dict[str, Any]:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": f"What is the weather in {city}?"}],
            "tools": [SEARCH, WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 80,
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def _check_forced(choice: dict[str, Any]) -> None:
    assert choice["finish_reason"] == "tool_calls", choice
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])


def test_twenty_schemas_eight_at_a_time(smol_server: Any) -> None:
    """20 different schemas, sent 8 at a time (one batch): every answer is valid JSON for its schema."""
    with smol_server.client() as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _json_request(client, i), range(len(SCHEMAS))))
    assert len({json.dumps(schema) for schema, _ in results}) == 20
    for schema, content in results:
        jsonschema.validate(json.loads(content), schema)


def test_schemas_one_at_a_time(smol_server: Any) -> None:
    with smol_server.client() as client:
        for index in (1, 8, 19):
            schema, content = _json_request(client, index)
            jsonschema.validate(json.loads(content), schema)


def test_named_tool_choice_alone_and_among_eight(smol_server: Any) -> None:
    with smol_server.client() as client:
        _check_forced(_forced_call(client, "Paris"))
        cities = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Rome", "Perth"]
        with ThreadPoolExecutor(8) as pool:
            for choice in pool.map(lambda c: _forced_call(client, c), cities):
                _check_forced(choice)


def test_json_object_streams_valid_json(smol_server: Any) -> None:
    client = smol_server.openai()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": 'Reply with a JSON object with one key, "city", naming the capital of France.'}],
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert isinstance(json.loads(text), dict), text


def test_required_tool_choice_streams_calls(smol_server: Any) -> None:
    client = smol_server.openai()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Find recipes for pancakes."}],
        tools=[SEARCH, WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=0,
        stream=True,
    )
    names, arguments, finish, content = "", "", None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or ():
            assert piece.index == 0
            names += (piece.function.name or "") if piece.function else ""
            arguments += (piece.function.arguments or "") if piece.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert content == ""  # no markup, no text around a forced call
    assert names in ("search", "get_weather")
    assert isinstance(json.loads(arguments), dict)
