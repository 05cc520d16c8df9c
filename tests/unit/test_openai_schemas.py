"""tests.openai_schemas accepts what OpenAI returns and rejects what it would not."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.openai_schemas import extract as extract_module
from tests.openai_schemas import schema_names, validate

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "tiny-llama",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}

CHAT_CHUNK: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "tiny-llama",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
}

COMPLETION: dict[str, Any] = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1700000000,
    "model": "tiny-llama",
    "choices": [{"index": 0, "text": "Paris.", "logprobs": None, "finish_reason": "length"}],
}

MODEL_LIST: dict[str, Any] = {
    "object": "list",
    "data": [{"id": "tiny-llama", "object": "model", "created": 1700000000, "owned_by": "local"}],
}

ERROR: dict[str, Any] = {
    "error": {
        "message": "The model 'x' does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
}


def changed(document: dict[str, Any], path: str, value: Any = ..., *, delete: bool = False) -> Any:
    """A deep copy of ``document`` with the dotted ``path`` set to ``value`` or deleted."""
    result = copy.deepcopy(document)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = result
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return result


@pytest.mark.parametrize(
    ("instance", "schema"),
    [
        (CHAT_COMPLETION, "CreateChatCompletionResponse"),
        (CHAT_CHUNK, "CreateChatCompletionStreamResponse"),
        (COMPLETION, "CreateCompletionResponse"),
        (MODEL_LIST, "ListModelsResponse"),
        (MODEL_LIST["data"][0], "Model"),
        (ERROR, "ErrorResponse"),
        (CHAT_COMPLETION["usage"], "CompletionUsage"),
    ],
)
def test_accepts_minimal_valid_documents(instance: dict[str, Any], schema: str) -> None:
    validate(instance, schema)


@pytest.mark.parametrize(
    ("instance", "schema"),
    [
        # Tool calls, with content null and an extension key in the message.
        (
            changed(
                CHAT_COMPLETION,
                "choices.0.message",
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "reasoning_content": "thinking",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
            ),
            "CreateChatCompletionResponse",
        ),
        # Token logprobs.
        (
            changed(
                CHAT_COMPLETION,
                "choices.0.logprobs",
                {
                    "content": [
                        {
                            "token": "Hello",
                            "logprob": -0.1,
                            "bytes": [72, 101, 108, 108, 111],
                            "top_logprobs": [{"token": "Hello", "logprob": -0.1, "bytes": None}],
                        }
                    ],
                    "refusal": None,
                },
            ),
            "CreateChatCompletionResponse",
        ),
        # The final usage chunk of a stream: no choices, usage present.
        (
            changed(
                changed(CHAT_CHUNK, "choices", []), "usage", CHAT_COMPLETION["usage"]
            ),
            "CreateChatCompletionStreamResponse",
        ),
        (changed(CHAT_CHUNK, "usage", None), "CreateChatCompletionStreamResponse"),
        (changed(CHAT_CHUNK, "choices.0.delta", {}), "CreateChatCompletionStreamResponse"),
        (
            changed(
                CHAT_CHUNK,
                "choices.0.delta",
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
            ),
            "CreateChatCompletionStreamResponse",
        ),
        (
            changed(CHAT_CHUNK, "choices.0.finish_reason", "length"),
            "CreateChatCompletionStreamResponse",
        ),
        (changed(ERROR, "error.param", None), "ErrorResponse"),
        (changed(ERROR, "error.code", None), "ErrorResponse"),
        (changed(COMPLETION, "choices.0.finish_reason", None), "CreateCompletionStreamResponse"),
        ({"object": "list", "data": []}, "ListModelsResponse"),
    ],
)
def test_accepts_variants(instance: dict[str, Any], schema: str) -> None:
    validate(instance, schema)


CHAT, CHUNK, TEXT = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
)
BAD_TOOL_CALL = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]


@pytest.mark.parametrize(
    ("instance", "schema", "expected"),
    [
        (changed(CHAT_COMPLETION, "id", delete=True), CHAT, "'id' is a required"),
        (changed(CHAT_COMPLETION, "object", "chat.completion.chunk"), CHAT, "$.object"),
        (changed(CHAT_COMPLETION, "choices.0.logprobs", delete=True), CHAT, "'logprobs' is a"),
        (changed(CHAT_COMPLETION, "choices.0.message.refusal", delete=True), CHAT, "'refusal'"),
        (changed(CHAT_COMPLETION, "choices.0.message.content", delete=True), CHAT, "'content'"),
        (changed(CHAT_COMPLETION, "choices.0.finish_reason", None), CHAT, "finish_reason"),
        (changed(CHAT_COMPLETION, "choices.0.finish_reason", "eos"), CHAT, "finish_reason"),
        (changed(CHAT_COMPLETION, "system_fingerprint", None), CHAT, "system_fingerprint"),
        (changed(CHAT_COMPLETION, "usage", None), CHAT, "$.usage"),
        (changed(CHAT_COMPLETION, "created", 1.5), CHAT, "$.created"),
        (changed(CHAT_COMPLETION, "choices.0.message.tool_calls", BAD_TOOL_CALL), CHAT, "[0]"),
        (changed(CHAT_CHUNK, "object", "chat.completion"), CHUNK, "$.object"),
        (changed(CHAT_CHUNK, "choices.0.finish_reason", delete=True), CHUNK, "'finish_reason'"),
        (changed(CHAT_CHUNK, "choices.0.delta", delete=True), CHUNK, "'delta' is a required"),
        (changed(CHAT_CHUNK, "choices.0.delta.role", "robot"), CHUNK, "delta.role"),
        (changed(COMPLETION, "choices.0.text", delete=True), TEXT, "'text' is a required"),
        (changed(COMPLETION, "choices.0.finish_reason", None), TEXT, "finish_reason"),
        (changed(COMPLETION, "object", "completion"), TEXT, "$.object"),
        (changed(MODEL_LIST, "object", "models"), "ListModelsResponse", "$.object"),
        (changed(MODEL_LIST, "data.0.owned_by", delete=True), "ListModelsResponse", "'owned_by'"),
        (changed(MODEL_LIST["data"][0], "created", delete=True), "Model", "'created'"),
        (changed(ERROR, "error.param", delete=True), "ErrorResponse", "'param' is a required"),
        (changed(ERROR, "error.code", 404), "ErrorResponse", "$.error.code"),
        ({"detail": "Not Found"}, "ErrorResponse", "'error' is a required"),
        ({"prompt_tokens": 1, "completion_tokens": 1}, "CompletionUsage", "'total_tokens'"),
    ],
)
def test_rejects_invalid_documents(instance: Any, schema: str, expected: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate(instance, schema)
    message = str(caught.value)
    assert message.startswith(schema)
    assert expected in message


def test_error_message_is_short_and_points_at_the_field() -> None:
    instance = changed(CHAT_COMPLETION, "choices.0.logprobs", delete=True)
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate(instance, "CreateChatCompletionResponse")
    assert str(caught.value) == (
        "CreateChatCompletionResponse at $.choices[0]: 'logprobs' is a required property"
    )
    assert list(caught.value.path) == ["choices", 0]
    assert isinstance(caught.value.__cause__, jsonschema.ValidationError)


def test_unknown_schema_name() -> None:
    with pytest.raises(KeyError, match="CreateChatCompletionResponse"):
        validate({}, "ChatCompletion")


def test_schemas_file_is_the_extract_of_the_spec(tmp_path: Path) -> None:
    """schemas.json is exactly what extract.py makes of the spec (when the spec is at hand)."""
    spec = Path(os.environ.get("OPENAI_OPENAPI_JSON", "/work/shared/openai-openapi/openapi.json"))
    if not spec.exists():
        pytest.skip("the OpenAI spec is not available here")
    output = tmp_path / "schemas.json"
    assert extract_module.main([str(spec), "-o", str(output)]) == 0
    assert output.read_text() == extract_module.DEFAULT_OUTPUT.read_text()


def test_schemas_file_is_plain_json_schema() -> None:
    document = json.loads(extract_module.DEFAULT_OUTPUT.read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    text = json.dumps(document["components"])
    assert '"nullable"' not in text and '"x-' not in text
    assert set(extract_module.ROOTS) <= set(schema_names())


def test_nullable_conversion() -> None:
    convert = extract_module.to_json_schema
    assert convert({"type": "string", "enum": ["a"], "nullable": True}) == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }
    assert convert({"$ref": "#/components/schemas/X", "nullable": True}) == {
        "anyOf": [{"$ref": "#/components/schemas/X"}, {"type": "null"}]
    }
    assert convert(
        {"type": "object", "properties": {"title": {"type": "string", "x-foo": 1}}, "example": {}}
    ) == {"type": "object", "properties": {"title": {"type": "string"}}}
