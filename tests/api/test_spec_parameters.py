"""Every parameter of the official OpenAI request schemas is known to the server.

Requests are generated from ``CreateChatCompletionRequest`` and ``CreateCompletionRequest`` of
the official spec (``tests/openai_schemas``): for each property, one request per branch of its
type (each enum value, each ``oneOf``/``anyOf`` alternative, ``null`` where allowed), the rest
of the body minimal and valid. None may be refused as ``unknown_parameter`` (that is only for
names outside the spec) and none may be a 5xx: a parameter is honoured, accepted because it asks
for what the server does anyway, or refused with a 400 that names it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.fakes import MODEL, assert_error, chat_body
from tests.openai_schemas import schemas, validate

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "CreateChatCompletionRequest": (CHAT, chat_body(), "CreateChatCompletionResponse"),
    "CreateCompletionRequest": (COMPLETIONS, {"model": MODEL, "prompt": "Hi"}, "CreateCompletionResponse"),
}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = schemas()[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def sample(schema: dict[str, Any], depth: int = 0) -> Any:
    """One small value valid for ``schema``: its default, its first enum value, or the least
    that its type, required keys, minimum and minItems allow."""
    schema = _resolve(schema)
    if schema.get("default") is not None:
        return copy.deepcopy(schema["default"])
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return next(v for v in schema["enum"] if v is not None)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [b for b in schema[key] if _types(_resolve(b)) != ["null"]]
            return sample(branches[0], depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(sample(part, depth + 1))
        return merged
    kinds = [k for k in _types(schema) if k != "null"] or (["object"] if "properties" in schema else ["string"])
    kind = kinds[0]
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: sample(properties[name], depth + 1) for name in schema.get("required", []) if name in properties}
    if kind == "array":
        return [sample(schema.get("items", {}), depth + 1) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return None


def variants(schema: dict[str, Any]) -> list[Any]:
    """A value per branch of a property's type: each enum value, each alternative, ``null``."""
    schema = _resolve(schema)
    values: list[Any] = []
    for key in ("anyOf", "oneOf"):
        for branch in schema.get(key, []):
            values.extend(variants(branch))
    if schema.get("enum"):
        values.extend(schema["enum"])
    elif not values:
        values.append(sample(schema))
    if "null" in _types(schema) and None not in values:
        values.append(None)
    unique: list[Any] = []
    for value in values:
        if value not in unique:
            unique.append(value)
    return unique


def _properties(name: str) -> dict[str, Any]:
    """Every property of a request schema, through its ``allOf`` parts at any depth."""
    return _own_properties(_resolve({"$ref": name}))


def _own_properties(schema: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for part in schema.get("allOf", []):
        properties.update(_own_properties(_resolve(part)))
    properties.update(schema.get("properties", {}))
    return properties


def cases(request: str) -> list[tuple[str, Any]]:
    """(property, value) for every property of a request schema and every branch of its type."""
    return [(name, value) for name, schema in _properties(request).items() for value in variants(schema)]


def test_every_property_has_cases() -> None:
    for request in BASES:
        assert {name for name, _ in cases(request)} == set(_properties(request))
    assert len(_properties("CreateChatCompletionRequest")) == 37 and len(_properties("CreateCompletionRequest")) == 18


@pytest.mark.parametrize("request_schema", list(BASES))
async def test_every_spec_parameter_is_known(harness: Any, request_schema: str) -> None:
    """One app for all of a schema's cases (each would otherwise start its own); every
    failure is collected, so one run names them all."""
    path, base, response_schema = BASES[request_schema]
    failures: list[str] = []
    for name, value in cases(request_schema):
        response = await harness.client.post(path, json={**base, name: value})
        where = f"{name}={json.dumps(value)[:60]}"
        if response.status_code >= 500:
            failures.append(f"{where}: {response.status_code} {response.text[:200]}")
        elif response.status_code != 200:
            error = assert_error(response, response.status_code)
            if error["code"] == "unknown_parameter":
                failures.append(f"{where}: unknown_parameter")
        elif response.headers["content-type"].startswith("application/json"):
            validate(response.json(), response_schema)
    assert not failures, "\n".join(failures)


# (parameter, value) that ask for what the server does anyway, or are hints: served as usual.
ACCEPTED: list[tuple[str, Any]] = [
    ("store", False),
    ("modalities", ["text"]),
    ("service_tier", "auto"),
    ("service_tier", "default"),
    ("verbosity", "medium"),
    ("audio", None),
    ("prediction", None),
    ("web_search_options", None),
    ("moderation", None),
    ("prompt_cache_key", "session-42"),
    ("prompt_cache_retention", "24h"),
    ("prompt_cache_options", {"ttl": "30m", "mode": "implicit"}),
    ("safety_identifier", "user-hash"),
    ("metadata", {"team": "a"}),
    ("user", "u1"),
    ("reasoning_effort", "low"),
    ("stream_options", {"include_usage": True, "include_obfuscation": False}),
]

# (parameter, value): known, but a value that cannot be served: a 400 that names it.
REFUSED: list[tuple[str, Any]] = [
    ("store", True),
    ("modalities", ["text", "audio"]),
    ("service_tier", "flex"),
    ("service_tier", "priority"),
    ("verbosity", "low"),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}),
    ("moderation", {"model": "omni-moderation-latest"}),
    ("functions", [{"name": "f"}]),
    ("function_call", "auto"),
]


async def test_default_asking_values_are_served(harness: Any) -> None:
    for name, value in ACCEPTED:
        stream = name == "stream_options"
        response = await harness.client.post(CHAT, json=chat_body(**{name: value}, stream=stream))
        assert response.status_code == 200, (name, value, response.text)
        if not stream:
            assert response.json()["choices"][0]["message"]["content"] == "Hello, world!"


async def test_unservable_values_are_refused_by_name(harness: Any) -> None:
    for name, value in REFUSED:
        response = await harness.client.post(CHAT, json=chat_body(**{name: value}))
        error = assert_error(response, 400, code="unsupported_value", param=name)
        assert error["message"].startswith(f"{name} {json.dumps(value)[:20]}"), error
    assert harness.factory.calls == 0


async def test_names_outside_the_spec_are_unknown(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(temprature=0.5))
    assert_error(response, 400, code="unknown_parameter", param="temprature")


def message_cases() -> list[tuple[str, dict[str, Any]]]:
    """(schema, message) for every kind of message in the spec and every property it has, each
    with a value per branch of its type."""
    found = []
    for branch in _resolve({"$ref": "ChatCompletionRequestMessage"})["oneOf"]:
        name = branch["$ref"].rsplit("/", 1)[-1]
        schema = _resolve(branch)
        base = sample(schema)
        for prop, prop_schema in schema.get("properties", {}).items():
            found += [(f"{name}.{prop}", {**base, prop: value}) for value in variants(prop_schema)]
        for option in _resolve(schema["properties"]["content"]).get("oneOf", []):  # each kind of content part
            items = _resolve(_resolve(option).get("items", {}))
            found += [(f"{name}.content[]", {**base, "content": [sample(part)]}) for part in items.get("oneOf", [])]
    return found


async def test_every_spec_message_field_is_known(harness: Any) -> None:
    """Messages of every role with every field the spec gives them: served, or a 400 naming
    the message, never an unknown parameter or a 5xx."""
    failures: list[str] = []
    for where, message in message_cases():
        messages = [message] if message["role"] in ("user", "system", "developer") else [{"role": "user", "content": "q"}, message]
        response = await harness.client.post(CHAT, json=chat_body(messages=messages))
        if response.status_code >= 500:
            failures.append(f"{where}: {response.status_code}")
        elif response.status_code != 200 and assert_error(response, 400)["code"] == "unknown_parameter":
            failures.append(f"{where}={json.dumps(message)[:80]}: unknown_parameter")
    assert len(message_cases()) >= 40  # 6 roles, each field, each kind of content part
    assert not failures, "\n".join(failures)
