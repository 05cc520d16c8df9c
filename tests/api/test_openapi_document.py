"""The server's own /openapi.json describes what it does: errors are 400 with the error
envelope (never FastAPI's 422), and a message's schema says which roles need content."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.fakes import MODEL, assert_error, chat_body

CHAT = "/v1/chat/completions"


@pytest.fixture
async def document(harness: Any) -> dict[str, Any]:
    response = await harness.client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    registry = Registry().with_resource("urn:doc", Resource.from_contents(document, default_specification=DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{name}"}, registry=registry)


async def test_no_operation_documents_422(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
async def test_generation_errors_are_documented_with_the_envelope(document: dict[str, Any], path: str) -> None:
    responses = document["paths"][path]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "404", "413", "429", "500", "503", "504", "507"}
    for status, response in responses.items():
        if status != "200":
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


async def test_documented_error_schema_is_what_is_sent(harness: Any, document: dict[str, Any]) -> None:
    response = await harness.client.post(CHAT, json=chat_body(n="2"))
    assert_error(response, 400)
    _validator(document, "ErrorResponse").validate(response.json())


MESSAGES: list[tuple[dict[str, Any], bool]] = [
    ({"role": "user", "content": "hi"}, True),
    ({"role": "user", "content": None}, False),
    ({"role": "user"}, False),
    ({"role": "system", "content": None}, False),
    ({"role": "tool", "content": None, "tool_call_id": "c1"}, False),
    ({"role": "tool", "content": "18C"}, False),
    ({"role": "tool", "content": "18C", "tool_call_id": "c1"}, True),
    ({"role": "assistant", "content": None}, False),
    ({"role": "assistant", "content": "hello"}, True),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, True),
    ({"role": "assistant", "refusal": "no"}, True),
    ({"role": "assistant", "content": "hi", "audio": {"id": "a1"}}, False),
    ({"role": "assistant", "content": "hi", "audio": None, "function_call": None}, True),
    ({"role": "assistant", "content": "hi", "function_call": {"name": "f", "arguments": "{}"}}, False),
]


async def test_message_schema_matches_the_server(harness: Any, document: dict[str, Any]) -> None:
    """What the document allows, the server takes; what it refuses, the document forbids."""
    validator = _validator(document, "ChatMessage")
    for message, accepted in MESSAGES:
        assert validator.is_valid(message) == accepted, message
        messages = [message] if message["role"] in ("user", "system") else [{"role": "user", "content": "q"}, message]
        response = await harness.client.post(CHAT, json={"model": MODEL, "messages": messages})
        assert (response.status_code == 200) == accepted, (message, response.text)
