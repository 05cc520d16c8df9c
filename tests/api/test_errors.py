"""Every way a request can be wrong gets the OpenAI error envelope, and the server stays up.

Each case checks the exact status, ``code`` and ``param``, that the body validates against the
official ``ErrorResponse`` schema, that it is never FastAPI's ``{"detail": ...}`` nor a 422, that
no traceback or filesystem path leaks, and that a valid request right after it succeeds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mlx_router.engine.types import EngineError
from tests.fakes import MODEL, FakeEngineScript, assert_error, chat_body

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


async def assert_still_serving(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body())
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello, world!"


def leaks_of(harness: Any) -> tuple[str, ...]:
    return (harness.settings.defaults.model_directory,)


# --------------------------------------------------------------------------- body problems

BAD_BODIES: list[tuple[str, dict[str, Any], str | None, str]] = [
    # (id, request kwargs, param, code)
    ("malformed-json", {"content": b'{"model": "tiny-llama", "messages": [', "headers": JSON}, None, "invalid_json"),
    ("trailing-comma", {"content": b'{"model": "tiny-llama",}', "headers": JSON}, None, "invalid_json"),
    ("not-an-object-list", {"json": [1, 2]}, None, "invalid_value"),
    ("not-an-object-string", {"json": "hello"}, None, "invalid_value"),
    ("not-an-object-null", {"content": b"null", "headers": JSON}, None, "invalid_value"),
    ("empty-body", {"content": b"", "headers": JSON}, None, "missing_body"),
    ("temperature-string", {"json": chat_body(temperature="hot")}, "temperature", "invalid_value"),
    ("temperature-too-high", {"json": chat_body(temperature=2.5)}, "temperature", "invalid_value"),
    ("top-p-zero", {"json": chat_body(top_p=0)}, "top_p", "invalid_value"),
    ("stream-not-bool", {"json": chat_body(stream="yes please")}, "stream", "invalid_value"),
    # Strict JSON types: nothing that pydantic's lax mode would coerce.
    ("stream-yes", {"json": chat_body(stream="yes")}, "stream", "invalid_value"),
    ("stream-one", {"json": chat_body(stream=1)}, "stream", "invalid_value"),
    ("stream-string-true", {"json": chat_body(stream="true")}, "stream", "invalid_value"),
    ("logprobs-zero", {"json": chat_body(logprobs=0)}, "logprobs", "invalid_value"),
    ("n-string", {"json": chat_body(n="2")}, "n", "invalid_value"),
    ("n-bool", {"json": chat_body(n=True)}, "n", "invalid_value"),
    ("max-tokens-whole-float", {"json": chat_body(max_tokens=5.0)}, "max_tokens", "invalid_value"),
    ("seed-string", {"json": chat_body(seed="7")}, "seed", "invalid_value"),
    ("temperature-numeric-string", {"json": chat_body(temperature="0.5")}, "temperature", "invalid_value"),
    ("temperature-bool", {"json": chat_body(temperature=True)}, "temperature", "invalid_value"),
    ("include-usage-string", {"json": chat_body(stream=True, stream_options={"include_usage": "yes"})}, "stream_options.include_usage", "invalid_value"),
    ("parallel-tool-calls-int", {"json": chat_body(parallel_tool_calls=0)}, "parallel_tool_calls", "invalid_value"),
    ("model-not-string", {"json": chat_body(model=42)}, "model", "invalid_value"),
    ("missing-messages", {"json": {"model": MODEL}}, "messages", "missing_required_parameter"),
    (
        "missing-model",
        {"json": {"messages": [{"role": "user", "content": "Hi"}]}},
        "model",
        "missing_required_parameter",
    ),
    ("messages-not-list", {"json": chat_body(messages="Hi")}, "messages", "invalid_value"),
    ("empty-messages", {"json": chat_body(messages=[])}, "messages", "invalid_value"),
    (
        "unknown-role",
        {"json": chat_body(messages=[{"role": "wizard", "content": "Hi"}])},
        "messages[0].role",
        "invalid_value",
    ),
    (
        "user-without-content",
        {"json": chat_body(messages=[{"role": "user"}])},
        "messages[0]",
        "invalid_value",
    ),
    (
        "tool-without-id",
        {"json": chat_body(messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])},
        "messages[1]",
        "invalid_value",
    ),
    ("max-tokens-zero", {"json": chat_body(max_tokens=0)}, "max_tokens", "invalid_value"),
    ("max-tokens-negative", {"json": chat_body(max_tokens=-1)}, "max_tokens", "invalid_value"),
    ("max-tokens-absurd", {"json": chat_body(max_tokens=10**9)}, "max_tokens", "invalid_request"),
    ("max-tokens-float", {"json": chat_body(max_tokens=1.5)}, "max_tokens", "invalid_value"),
    (
        "max-completion-tokens-absurd",
        {"json": chat_body(max_completion_tokens=10**9)},
        "max_completion_tokens",
        "invalid_request",
    ),
    (
        "max-completion-tokens-zero",
        {"json": chat_body(max_completion_tokens=0)},
        "max_completion_tokens",
        "invalid_value",
    ),
    ("unknown-parameter", {"json": chat_body(frobnicate=True)}, "frobnicate", "unknown_parameter"),
    (
        "unknown-message-field",
        {"json": chat_body(messages=[{"role": "user", "content": "Hi", "mood": "happy"}])},
        "messages[0].mood",
        "unknown_parameter",
    ),
    ("n-over-max-n", {"json": chat_body(n=17)}, "n", "invalid_request"),
    ("n-huge", {"json": chat_body(n=1000)}, "n", "invalid_value"),
    ("top-logprobs-without-logprobs", {"json": chat_body(top_logprobs=2)}, "top_logprobs", "invalid_request"),
    ("top-logprobs-too-many", {"json": chat_body(top_logprobs=21)}, "top_logprobs", "invalid_value"),
    (
        "tools",
        {"json": chat_body(tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])},
        "tools",
        "invalid_request",
    ),
    (
        "image-url-part",
        {
            "json": chat_body(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        ],
                    }
                ]
            )
        },
        "messages[0].content[1]",
        "model_not_vision_capable",
    ),
    ("too-many-stops", {"json": chat_body(stop=["a", "b", "c", "d", "e"])}, "stop", "invalid_value"),
    ("stop-too-long", {"json": chat_body(stop="x" * 257)}, "stop", "invalid_value"),
    (
        "response-format-unsupported-schema",
        {"json": chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}})},
        "response_format",
        "invalid_request",
    ),
    ("logit-bias-not-token-id", {"json": chat_body(logit_bias={"hello": 1.0})}, "logit_bias", "invalid_request"),
    ("logit-bias-out-of-range", {"json": chat_body(logit_bias={"5": 500})}, "logit_bias", "invalid_request"),
    ("stream-format-unknown", {"json": chat_body(streaming_format="xml")}, "streaming_format", "invalid_value"),
    (
        "stream-options-without-stream",
        {"json": chat_body(stream_options={"include_usage": True})},
        "stream_options",
        "invalid_request",
    ),
]


@pytest.mark.parametrize(("kwargs", "param", "code"), [case[1:] for case in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
async def test_bad_request_gets_400_envelope(
    harness: Any, kwargs: dict[str, Any], param: str | None, code: str
) -> None:
    response = await harness.client.post(CHAT, **kwargs)
    assert_error(response, 400, param=param, code=code, error_type="invalid_request_error", leaks=leaks_of(harness))
    await assert_still_serving(harness)


async def test_unknown_parameter_message_names_it(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(frobnicate=True))
    assert_error(response, 400, param="frobnicate", message_contains=["frobnicate"])


async def test_bad_requests_load_nothing(harness: Any) -> None:
    """Validation happens before any model is touched."""
    for case in BAD_BODIES:
        response = await harness.client.post(CHAT, **case[1])
        assert response.status_code == 400, (case[0], response.text)
    assert harness.factory.calls == 0
    assert harness.factory.requests == []


async def test_tools_refused_with_function_calling_disabled(make_app: Any) -> None:
    harness = await make_app(defaults={"enable_function_calling": False})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    response = await harness.client.post(CHAT, json=chat_body(tools=tools))
    error = assert_error(response, 400, param="tools", code="invalid_request")
    assert "disabled" in error["message"].lower()
    await assert_still_serving(harness)


async def test_body_not_an_object_message_is_readable(harness: Any) -> None:
    """Not 'Invalid value for None: ...' (param is None when the body itself is wrong)."""
    response = await harness.client.post(CHAT, json=[1, 2])
    error = assert_error(response, 400, param=None, code="invalid_value")
    assert "None" not in error["message"], error["message"]
    assert "object" in error["message"].lower()


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_json_body_with_wrong_content_type_is_refused(harness: Any, content_type: str | None) -> None:
    """FastAPI's strict Content-Type check (a CSRF guard for localhost servers) stays on."""
    headers = {"content-type": content_type} if content_type else {}
    response = await harness.client.post(CHAT, content=json.dumps(chat_body()).encode(), headers=headers)
    assert_error(response, 400, param=None, code="invalid_content_type")
    assert harness.factory.calls == 0
    await assert_still_serving(harness)


async def test_wrong_content_type_message_names_the_header(harness: Any) -> None:
    """curl -d / requests.post(data=...) users are told what to fix."""
    response = await harness.client.post(CHAT, content=json.dumps(chat_body()).encode())
    error = assert_error(response, 400, param=None, code="invalid_content_type")
    assert "content-type" in error["message"].lower(), error["message"]


# --------------------------------------------------------------------------- size cap


async def test_body_over_cap_with_content_length_is_413(make_app: Any) -> None:
    harness = await make_app(server={"max_request_bytes": 2048})
    big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])
    response = await harness.client.post(CHAT, json=big)
    error = assert_error(response, 413, code="request_too_large", param=None)
    assert "max_request_bytes" in error["message"]
    assert harness.factory.calls == 0
    await assert_still_serving(harness)


async def test_body_just_under_cap_is_accepted(make_app: Any) -> None:
    harness = await make_app(server={"max_request_bytes": 2048})
    body = chat_body(messages=[{"role": "user", "content": "x" * 1500}])
    response = await harness.client.post(CHAT, json=body)
    assert response.status_code == 200, response.text


async def _chunked(total: int, piece: int = 512) -> AsyncIterator[bytes]:
    prefix = b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
    yield prefix
    sent = len(prefix)
    while sent < total:
        yield b"x" * piece
        sent += piece
    yield b'"}]}'


async def test_chunked_body_over_cap_is_413(make_app: Any) -> None:
    """A body without Content-Length is counted as it arrives, and refused the same way."""
    harness = await make_app(server={"max_request_bytes": 2048})
    response = await harness.client.post(CHAT, content=_chunked(8000), headers=JSON)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    error = assert_error(response, 413, code="request_too_large", param=None)
    assert "max_request_bytes" in error["message"]
    assert harness.factory.calls == 0
    await assert_still_serving(harness)


async def test_chunked_body_under_cap_is_accepted(make_app: Any) -> None:
    harness = await make_app(server={"max_request_bytes": 4096})
    response = await harness.client.post(CHAT, content=_chunked(1000), headers=JSON)
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- routes and methods


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("POST", "/v1/completions/nope"),
        ("GET", "/v1"),
        ("GET", "/v2/models"),
        ("GET", "/docs/../etc"),
    ],
)
async def test_unknown_route_is_404_envelope(harness: Any, method: str, path: str) -> None:
    response = await harness.client.request(method, path)
    assert_error(response, 404, code="unknown_url", param=None)
    await assert_still_serving(harness)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", CHAT), ("PUT", CHAT), ("DELETE", "/v1/models"), ("POST", "/v1/models"), ("POST", "/health")],
)
async def test_wrong_method_is_405_envelope(harness: Any, method: str, path: str) -> None:
    response = await harness.client.request(method, path)
    assert_error(response, 405, code="method_not_allowed", param=None)
    await assert_still_serving(harness)


async def test_405_carries_allow_header(harness: Any) -> None:
    """RFC 9110 §15.5.6: a 405 response must say which methods are allowed."""
    response = await harness.client.get(CHAT)
    assert response.status_code == 405
    assert "POST" in response.headers.get("allow", "")


async def test_never_422(harness: Any) -> None:
    """FastAPI's default for validation failures is 422 {"detail": [...]}: never here."""
    for case in BAD_BODIES:
        response = await harness.client.post(CHAT, **case[1])
        assert response.status_code != 422, (case[0], response.text)
        assert "detail" not in response.json(), (case[0], response.text)
    for response in (
        await harness.client.get("/v1/models/%00"),
        await harness.client.post(CHAT, content=b"\xff\xfe", headers=JSON),
        await harness.client.post(
            CHAT, content=b"model=x", headers={"content-type": "application/x-www-form-urlencoded"}
        ),
    ):
        assert response.status_code != 422, response.text
        assert_error(response, response.status_code)


# --------------------------------------------------------------------------- unknown model


async def test_unknown_model_is_404_and_loads_nothing(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(model="gpt-4o"))
    error = assert_error(response, 404, code="model_not_found", param="model", leaks=leaks_of(harness))
    assert "gpt-4o" in error["message"]
    assert MODEL in error["message"], "the message should name the available models"
    assert harness.factory.calls == 0
    assert harness.manager.loads == 0
    await assert_still_serving(harness)
    assert harness.factory.calls == 1


async def test_unknown_model_does_not_touch_a_loaded_one(harness: Any) -> None:
    await assert_still_serving(harness)
    client = harness.factory.clients[0]
    for name in ("mlx-community/Llama-3-8B", "tiny-llama ", "x" * 256):
        response = await harness.client.post(CHAT, json=chat_body(model=name))
        assert_error(response, 404, code="model_not_found", param="model", leaks=leaks_of(harness))
    # Ids shaped like paths (or too long) are refused before any lookup.
    for name in ("../tiny-llama", "/etc/passwd", "tiny-llama/../../x", "a\\b", "~/models/x", "x" * 257):
        response = await harness.client.post(CHAT, json=chat_body(model=name))
        assert_error(response, 400, code="invalid_request", param="model", leaks=leaks_of(harness))
    assert harness.factory.calls == 1
    assert client.alive and not client.stopped
    await assert_still_serving(harness)
    assert harness.factory.calls == 1


# --------------------------------------------------------------------------- engine and load failures


async def test_model_load_failure_is_503_without_paths(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(start_error=EngineError("internal", "weights are corrupt")))
    response = await harness.client.post(CHAT, json=chat_body())
    error = assert_error(response, 503, code="model_load_failed", leaks=leaks_of(harness))
    assert "weights are corrupt" in error["message"]
    health = (await harness.client.get("/v1/health")).json()
    assert health["models"][MODEL] == "failed"


async def test_model_load_failure_does_not_leak_the_model_path(make_app: Any, tiny_model_dir: Any) -> None:
    """Library errors name files; what a client sees of them must not (defence in depth)."""
    # The message the real worker sends for a corrupt weights file (seen with a real worker).
    message = f"RuntimeError: [load_safetensors] Invalid json header length file {tiny_model_dir}/model.safetensors"
    harness = await make_app(script=FakeEngineScript(start_error=EngineError("internal", message)))
    response = await harness.client.post(CHAT, json=chat_body())
    assert response.status_code == 503
    assert str(tiny_model_dir) not in response.text
    card = (await harness.client.get(f"/v1/models/{MODEL}")).text
    assert str(tiny_model_dir) not in card


async def test_model_out_of_memory_at_load_is_507(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(start_error=EngineError("out_of_memory", "needs 80 GB")))
    response = await harness.client.post(CHAT, json=chat_body())
    assert_error(response, 507, code="insufficient_memory", leaks=leaks_of(harness))


async def test_unexpected_exception_is_500_without_traceback(make_app: Any) -> None:
    harness = await make_app()

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"secret detail at {harness.settings.defaults.model_directory}/x.py")

    harness.app.state.runner.start = explode
    response = await harness.client.post(CHAT, json=chat_body())
    error = assert_error(response, 500, code="internal_error", leaks=leaks_of(harness))
    assert "secret detail" not in error["message"]


async def test_responses_carry_request_id_even_on_errors(harness: Any) -> None:
    for response in (
        await harness.client.post(CHAT, json=chat_body(model="nope")),
        await harness.client.post(CHAT, content=b"{", headers=JSON),
        await harness.client.get("/nope"),
    ):
        assert response.headers.get("x-request-id", "").startswith("req-"), response.headers


async def test_error_bodies_are_json_with_content_length(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(n=17))
    assert int(response.headers["content-length"]) == len(response.content)
    assert isinstance(response.json(), dict)
    assert httpx.codes.is_client_error(response.status_code)


async def test_integers_are_numbers(harness: Any) -> None:
    """JSON has one number type: an integer is a valid temperature, penalty or bias."""
    body = chat_body(temperature=1, top_p=1, presence_penalty=0, frequency_penalty=1, logit_bias={"5": 2})
    response = await harness.client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    params = harness.factory.requests[0].params
    assert (params.temperature, params.top_p, params.frequency_penalty, params.logit_bias) == (1.0, 1.0, 1.0, {5: 2.0})


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": MODEL, "prompt": "a\ud800b"}, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": ["ok", "\udfff"]}, "prompt[1]"),
        (CHAT, chat_body(messages=[{"role": "user", "content": "x\ud83d"}]), "messages[0].content"),
        (CHAT, chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]), "messages[0].content[0].text"),
        (CHAT, chat_body(stop=["\udc00"]), "stop[0]"),
        (CHAT, chat_body(metadata={"k\ud800": "v"}), "metadata.k\ud800"),
    ],
    ids=["completion-prompt", "completion-prompt-list", "chat-content", "chat-text-part", "stop", "metadata-key"],
)
async def test_lone_surrogate_is_a_clean_400(harness: Any, path: str, body: dict[str, Any], param: str) -> None:
    """JSON lets an unpaired \\ud800 escape through; no tokenizer can encode it. A 400 naming the
    field, never a 500 or a tokenizer's message."""
    response = await harness.client.post(path, content=json.dumps(body).encode(), headers=JSON)
    error = assert_error(response, 400, code="invalid_value", leaks=("TextEncodeInput", "Union["))
    assert error["param"] == param.encode("utf-8", "backslashreplace").decode()
    assert "lone surrogate" in error["message"]
    assert harness.factory.calls == 0
    await assert_still_serving(harness)


async def test_paired_surrogates_are_fine(harness: Any) -> None:
    response = await harness.client.post(CHAT, content=b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}', headers=JSON)
    assert response.status_code == 200, response.text
    assert harness.factory.requests[0].messages[0]["content"] == "\U0001f600"
