"""``POST /v1/chat/completions`` over the scripted fake engine.

The fake replays fixed strings (no generation): these tests are about the wire format, the
stream writers, errors inside streams, timeouts, cancellation and worker crashes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mlx_router.api.sse import stream_response, write_stream
from mlx_router.engine.types import EngineError
from mlx_router.protocol.chat import ChatCompletionChunk, ChunkChoice, Delta
from tests.fakes import MODEL, FakeEngineScript, assert_error, chat_body
from tests.openai_schemas import validate

CHAT = "/v1/chat/completions"
CHUNKS = ("Hello", ",", " world", "!")


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order; fails on anything that is not SSE."""
    assert text.endswith("\n\n"), repr(text[-40:])
    payloads = []
    for event in text.split("\n\n")[:-1]:
        lines = event.split("\n")
        if all(line.startswith(":") for line in lines):
            continue  # comment (keep-alive)
        assert len(lines) == 1 and lines[0].startswith("data: "), repr(event)
        payloads.append(lines[0].removeprefix("data: "))
    return payloads


def parse_sse(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(JSON objects of all events before ``[DONE]``, raw payloads); ``[DONE]`` must be last and once."""
    payloads = sse_events(text)
    assert payloads and payloads[-1] == "[DONE]", payloads[-3:]
    assert payloads.count("[DONE]") == 1
    return [json.loads(p) for p in payloads[:-1]], payloads


def split_chunks(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(chat chunks, trailing error envelope or None)."""
    if events and "error" in events[-1]:
        return events[:-1], events[-1]
    return events, None


def assert_chunk_stream(chunks: list[dict[str, Any]], *, texts: tuple[str, ...], finish: str | None) -> None:
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks, "no chunks"
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1, ids
    assert {c["model"] for c in chunks} == {MODEL}
    first = chunks[0]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["choices"][0]["finish_reason"] is None
    content = [c for c in chunks[1:] if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert tuple(c["choices"][0]["delta"]["content"] for c in content) == texts
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    if finish is None:
        assert finishes == []
    else:
        assert finishes == [finish]
        last_with_choices = [c for c in chunks if c["choices"]][-1]
        assert last_with_choices["choices"][0]["finish_reason"] == finish


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- non-streaming


async def test_non_streaming_response(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-")
    assert abs(body["created"] - time.time()) < 60
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello, world!"
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 7
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == 11


async def test_usage_comes_from_the_engine(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(chunks=("a",) * 9, prompt_tokens=123))
    body = (await harness.client.post(CHAT, json=chat_body())).json()
    assert body["usage"]["prompt_tokens"] == 123
    assert body["usage"]["completion_tokens"] == 9
    assert body["usage"]["total_tokens"] == 132
    assert body["choices"][0]["message"]["content"] == "a" * 9


async def test_finish_reason_length(harness: Any) -> None:
    body = (await harness.client.post(CHAT, json=chat_body(max_tokens=2))).json()
    validate(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "Hello,"
    assert body["usage"]["completion_tokens"] == 2


async def test_request_parameters_reach_the_engine(harness: Any) -> None:
    body = chat_body(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": None, "refusal": "no"},
            {"role": "user", "content": "again"},
        ],
        temperature=0,
        top_p=0.5,
        seed=42,
        stop=["\n\n", "END"],
        max_tokens=3,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"17": -100},
    )
    response = await harness.client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    [request] = harness.factory.requests
    params = request.params
    assert params.temperature == 0.0
    assert params.top_p == 0.5
    assert params.seed == 42
    assert params.stop == ("\n\n", "END")
    assert params.max_tokens == 3
    assert params.presence_penalty == 0.5
    assert params.frequency_penalty == -0.5
    assert params.logit_bias == {17: -100.0}
    assert request.messages is not None
    assert [m["role"] for m in request.messages] == ["system", "user", "assistant", "user"]
    assert request.messages[1]["content"] == "Hi there"


async def test_model_config_defaults_apply_when_request_is_silent(make_app: Any) -> None:
    harness = await make_app(models={MODEL: {"max_tokens": 3, "temp": 0.2, "top_p": 0.9, "top_k": 5}})
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    params = harness.factory.requests[0].params
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (3, 0.2, 0.9, 5)
    assert (await harness.client.post(CHAT, json=chat_body(temperature=0, max_completion_tokens=7))).status_code == 200
    params = harness.factory.requests[1].params
    assert (params.max_tokens, params.temperature) == (7, 0.0)


async def test_x_request_id_header_is_the_engine_request_id(harness: Any) -> None:
    first = await harness.client.post(CHAT, json=chat_body())
    second = await harness.client.post(CHAT, json=chat_body(stream=True))
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(i.startswith("req-") for i in ids) and ids[0] != ids[1]
    # One engine sequence per choice, named after the request: <x-request-id>-<choice>.
    assert [r.request_id for r in harness.factory.requests] == [f"{i}-0" for i in ids]
    assert (await harness.client.get("/v1/models")).headers["x-request-id"].startswith("req-")
    assert (await harness.client.get("/health")).headers["x-request-id"].startswith("req-")


async def test_concurrent_first_requests_share_one_load(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(start_delay=0.2))
    responses = await asyncio.gather(*(harness.client.post(CHAT, json=chat_body()) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert harness.factory.calls == 1
    assert len(harness.factory.requests) == 8


async def test_cancelled_first_request_does_not_kill_the_shared_load(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(start_delay=0.3))
    first = asyncio.ensure_future(harness.client.post(CHAT, json=chat_body()))
    await asyncio.sleep(0.05)  # the first request is now loading the model
    second = asyncio.ensure_future(harness.client.post(CHAT, json=chat_body()))
    await asyncio.sleep(0.05)  # the second one waits for the same load
    first.cancel()
    [result] = await asyncio.gather(second, return_exceptions=True)
    assert not isinstance(result, BaseException), f"the waiting request died with {result!r}"
    assert result.status_code == 200, result.text
    assert harness.manager.states[MODEL].value == "ready"


# --------------------------------------------------------------------------- SSE


async def test_streaming_sse(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-request-id"].startswith("req-")
    events, _ = parse_sse(response.text)
    chunks, error = split_chunks(events)
    assert error is None
    assert_chunk_stream(chunks, texts=CHUNKS, finish="stop")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c.get("usage") is None for c in chunks)
    # role delta, 4 content deltas, finish chunk: nothing else.
    assert len(chunks) == 6


async def test_streaming_include_usage(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(stream=True, stream_options={"include_usage": True}))
    events, _ = parse_sse(response.text)
    chunks, error = split_chunks(events)
    assert error is None
    usage_chunk = chunks[-1]
    validate(usage_chunk, "CreateChatCompletionStreamResponse")
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 7
    assert usage_chunk["usage"]["completion_tokens"] == 4
    assert usage_chunk["usage"]["total_tokens"] == 11
    assert usage_chunk["id"] == chunks[0]["id"]
    assert_chunk_stream(chunks[:-1], texts=CHUNKS, finish="stop")
    assert all(c.get("usage") is None for c in chunks[:-1])


async def test_streaming_include_usage_false(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(stream=True, stream_options={"include_usage": False}))
    events, _ = parse_sse(response.text)
    assert all(e["choices"] for e in events)


async def test_streaming_length_finish(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(stream=True, max_tokens=2))
    events, _ = parse_sse(response.text)
    assert_chunk_stream(events, texts=("Hello", ","), finish="length")


async def test_stream_options_without_stream_is_400(harness: Any) -> None:
    for body in (
        chat_body(stream_options={"include_usage": True}),
        chat_body(stream=False, stream_options={"include_usage": True}),
    ):
        response = await harness.client.post(CHAT, json=body)
        assert_error(response, 400, param="stream_options", code="invalid_request")


async def test_defaults_stream_true(make_app: Any) -> None:
    harness = await make_app(defaults={"stream": True})
    silent = await harness.client.post(CHAT, json=chat_body())
    assert silent.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_sse(silent.text)
    assert_chunk_stream(events, texts=CHUNKS, finish="stop")
    # stream_options is allowed when streaming comes from the defaults.
    with_usage = await harness.client.post(CHAT, json=chat_body(stream_options={"include_usage": True}))
    assert parse_sse(with_usage.text)[0][-1]["choices"] == []
    explicit_false = await harness.client.post(CHAT, json=chat_body(stream=False))
    assert explicit_false.headers["content-type"].startswith("application/json")
    validate(explicit_false.json(), "CreateChatCompletionResponse")


async def test_defaults_stream_false_by_default(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body())
    assert response.headers["content-type"].startswith("application/json")


# --------------------------------------------------------------------------- json_lines / json_array


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[-1] == {"done": True}
    return lines[:-1]


async def test_json_lines_per_request(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(stream=True, streaming_format="json_lines"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert_chunk_stream(parse_json_lines(response.text), texts=CHUNKS, finish="stop")


async def test_json_array_per_request(harness: Any) -> None:
    response = await harness.client.post(
        CHAT, json=chat_body(stream=True, streaming_format="json_array", stream_options={"include_usage": True})
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    items = json.loads(response.text)
    assert isinstance(items, list)
    assert items[-1]["choices"] == [] and items[-1]["usage"]["total_tokens"] == 11
    assert_chunk_stream(items[:-1], texts=CHUNKS, finish="stop")


async def test_streaming_format_from_config(make_app: Any) -> None:
    harness = await make_app(defaults={"streaming_format": "json_array"})
    response = await harness.client.post(CHAT, json=chat_body(stream=True))
    assert response.headers["content-type"].startswith("application/json")
    assert_chunk_stream(json.loads(response.text), texts=CHUNKS, finish="stop")
    # A request may still choose another format.
    response = await harness.client.post(CHAT, json=chat_body(stream=True, streaming_format="sse"))
    assert response.headers["content-type"].startswith("text/event-stream")
    parse_sse(response.text)


async def test_json_lines_from_config(make_app: Any) -> None:
    harness = await make_app(defaults={"streaming_format": "json_lines", "stream": True})
    response = await harness.client.post(CHAT, json=chat_body())
    assert_chunk_stream(parse_json_lines(response.text), texts=CHUNKS, finish="stop")


async def test_streaming_format_ignored_without_stream(harness: Any) -> None:
    response = await harness.client.post(CHAT, json=chat_body(streaming_format="json_lines"))
    validate(response.json(), "CreateChatCompletionResponse")


# --------------------------------------------------------------------------- errors inside streams


async def test_engine_error_mid_stream(make_app: Any) -> None:
    script = FakeEngineScript(error_after=2, error=EngineError("internal", "decode step failed"), faulty_requests=1)
    harness = await make_app(script=script)
    response = await harness.client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    events, _ = parse_sse(response.text)
    chunks, error = split_chunks(events)
    assert error is not None
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "internal_error"
    assert error["error"]["type"] == "server_error"
    assert "Traceback" not in response.text
    assert_chunk_stream(chunks, texts=("Hello", ","), finish=None)
    # The server and the worker are fine: the next request succeeds on the same worker.
    ok = await harness.client.post(CHAT, json=chat_body(stream=True))
    assert_chunk_stream(parse_sse(ok.text)[0], texts=CHUNKS, finish="stop")
    assert harness.factory.calls == 1


async def test_out_of_memory_mid_stream(make_app: Any) -> None:
    script = FakeEngineScript(error_after=1, error=EngineError("out_of_memory", "KV cache full"), faulty_requests=1)
    harness = await make_app(script=script)
    response = await harness.client.post(CHAT, json=chat_body(stream=True))
    chunks, error = split_chunks(parse_sse(response.text)[0])
    assert error is not None and error["error"]["code"] == "insufficient_memory"
    assert "KV cache full" in error["error"]["message"]
    assert_chunk_stream(chunks, texts=("Hello",), finish=None)


@pytest.mark.parametrize("fmt", ["json_lines", "json_array"])
async def test_engine_error_mid_stream_other_formats(make_app: Any, fmt: str) -> None:
    script = FakeEngineScript(error_after=1, error=EngineError("out_of_memory", "KV cache full"))
    harness = await make_app(script=script)
    response = await harness.client.post(CHAT, json=chat_body(stream=True, streaming_format=fmt))
    items = parse_json_lines(response.text) if fmt == "json_lines" else json.loads(response.text)
    chunks, error = split_chunks(items)
    assert error is not None
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "insufficient_memory"
    assert_chunk_stream(chunks, texts=("Hello",), finish=None)


async def test_engine_error_mid_stream_non_streaming(make_app: Any) -> None:
    script = FakeEngineScript(error_after=2, error=EngineError("internal", "decode step failed"), faulty_requests=1)
    harness = await make_app(script=script)
    response = await harness.client.post(CHAT, json=chat_body())
    assert_error(response, 500, code="internal_error")
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200


async def test_worker_crash_mid_stream(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(crash_after=1, faulty_requests=1))
    response = await harness.client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    events, _ = parse_sse(response.text)
    chunks, error = split_chunks(events)
    assert error is not None
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "worker_crashed"
    assert "signal 9" in error["error"]["message"]
    assert_chunk_stream(chunks, texts=("Hello",), finish=None)

    health = (await harness.client.get("/v1/health")).json()
    assert health["worker_restarts"] == 1
    assert health["models"][MODEL] == "failed"
    assert health["loaded_models"] == []
    card = (await harness.client.get(f"/v1/models/{MODEL}")).json()
    assert card["state"] == "failed"
    assert "signal 9" in card["failure_reason"]

    # The next request starts a fresh worker and succeeds.
    ok = await harness.client.post(CHAT, json=chat_body(stream=True))
    assert_chunk_stream(parse_sse(ok.text)[0], texts=CHUNKS, finish="stop")
    assert harness.factory.calls == 2
    assert harness.factory.clients[0].crashed and not harness.factory.clients[1].crashed
    health = (await harness.client.get("/v1/health")).json()
    assert health["models"][MODEL] == "ready"
    assert health["worker_restarts"] == 1
    assert [m["pid"] for m in health["loaded_models"]] == [harness.factory.clients[1].pid]


async def test_worker_crash_non_streaming_is_503(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(crash_after=2, faulty_requests=1))
    response = await harness.client.post(CHAT, json=chat_body())
    assert_error(response, 503, code="worker_crashed")
    ok = await harness.client.post(CHAT, json=chat_body())
    assert ok.status_code == 200
    assert harness.factory.calls == 2


async def test_context_length_at_admission_is_http_400(make_app: Any) -> None:
    script = FakeEngineScript(
        admission_error=EngineError("context_length", "The prompt has 5000 tokens; the context is 2048."),
        faulty_requests=2,
    )
    harness = await make_app(script=script)
    for stream in (True, False):
        response = await harness.client.post(CHAT, json=chat_body(stream=stream))
        error = assert_error(response, 400, code="context_length_exceeded", param="messages")
        assert "2048" in error["message"]
    assert (await harness.client.post(CHAT, json=chat_body(stream=True))).status_code == 200


# --------------------------------------------------------------------------- timeouts and cancellation


async def test_timeout_non_streaming_returns_what_was_generated(make_app: Any) -> None:
    """defaults.timeout ends a non-streaming request with its text so far, never with nothing."""
    script = FakeEngineScript(chunks=("Hello", ",", " world", "!"), chunk_delay=1.0, first_chunk_delay=0.0)
    harness = await make_app(script=script, defaults={"timeout": 1.5})  # between the 2nd and 3rd chunk
    started = time.monotonic()
    response = await harness.client.post(CHAT, json=chat_body())
    assert time.monotonic() - started < 3.0
    assert response.status_code == 200, response.text
    assert response.headers["x-mlx-router-stopped"] == "timeout"
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "Hello,"
    assert body["usage"]["completion_tokens"] == 2
    assert harness.factory.cancellations == [harness.factory.requests[0].request_id]
    assert harness.factory.clients[0].in_flight == 0
    assert harness.manager.model_stats()[0].in_flight == 0


async def test_timeout_keeps_finished_choices_and_completions(make_app: Any) -> None:
    """Each unfinished choice ends with length; the text completions path does the same."""
    harness = await make_app(script=FakeEngineScript(chunk_delay=5.0), defaults={"timeout": 1.0})
    response = await harness.client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "n": 2})
    assert response.status_code == 200, response.text
    assert response.headers["x-mlx-router-stopped"] == "timeout"
    body = response.json()
    validate(body, "CreateCompletionResponse")
    assert [(c["text"], c["finish_reason"]) for c in body["choices"]] == [("Hello", "length")] * 2
    assert len(harness.factory.cancellations) == 2


async def test_timeout_before_admission_is_504(make_app: Any) -> None:
    """Nothing generated yet (the prompt was never admitted): 504, and nothing is lost."""
    harness = await make_app(script=FakeEngineScript(admission_delay=5.0), defaults={"timeout": 0.2})
    response = await harness.client.post(CHAT, json=chat_body())
    error = assert_error(response, 504, code="timeout", error_type="timeout_error")
    assert "defaults.timeout" in error["message"]
    assert len(harness.factory.cancellations) == 1


async def test_timeout_never_cuts_a_stream(make_app: Any) -> None:
    """A stream runs past defaults.timeout to its end (keep-alives meanwhile)."""
    script = FakeEngineScript(chunks=("a", "b", "c"), chunk_delay=0.2)
    harness = await make_app(script=script, defaults={"timeout": 0.1}, server={"sse_keepalive_seconds": 0.05})
    response = await harness.client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    assert "x-mlx-router-stopped" not in response.headers
    events, _ = parse_sse(response.text)
    chunks, error = split_chunks(events)
    assert error is None
    assert_chunk_stream(chunks, texts=("a", "b", "c"), finish="stop")
    assert ": keep-alive" in response.text
    assert harness.factory.cancellations == []


async def test_client_disconnect_mid_stream_cancels(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(chunks=tuple(f"t{i} " for i in range(200)), chunk_delay=0.02))
    async with harness.stream_client.stream("POST", CHAT, json=chat_body(stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = ""
        async for text in response.aiter_text():
            received += text
            if received.count("data: ") >= 3:
                break
    # Hung up after a few events: the engine request is cancelled, not generated to the end.
    await wait_for(lambda: len(harness.factory.cancellations) == 1)
    [request] = harness.factory.requests
    assert harness.factory.cancellations == [request.request_id]
    client = harness.factory.clients[0]
    assert request.request_id not in client.completed
    await wait_for(lambda: harness.manager.model_stats()[0].in_flight == 0)
    assert client.in_flight == 0
    # The worker keeps serving.
    assert (await harness.client.post(CHAT, json=chat_body(max_tokens=2))).status_code == 200
    assert harness.factory.calls == 1


async def test_streaming_is_incremental(make_app: Any) -> None:
    """Chunks reach the client as the engine produces them, not all at the end."""
    harness = await make_app(script=FakeEngineScript(chunks=("a", "b", "c"), chunk_delay=0.3))
    started = time.monotonic()
    async with harness.stream_client.stream("POST", CHAT, json=chat_body(stream=True)) as response:
        arrivals = []
        received = ""
        async for text in response.aiter_text():
            received += text
            arrivals.append((time.monotonic() - started, text))
    # "b" and "c" come 0.3 s apart after "a": "a" arrives well before the last chunk (a buffered
    # stream delivers them together); measured as a gap, so a loaded machine cannot fail it.
    first_content = next(t for t, text in arrivals if '"content":"a"' in text)
    last_content = next(t for t, text in arrivals if '"content":"c"' in text)
    assert last_content - first_content >= 0.4, arrivals
    assert parse_sse(received)[1][-1] == "[DONE]"
    assert harness.factory.cancellations == []


async def test_completed_requests_are_not_cancellations(harness: Any) -> None:
    await harness.client.post(CHAT, json=chat_body())
    await harness.client.post(CHAT, json=chat_body(stream=True))
    assert harness.factory.cancellations == []
    assert len(harness.factory.clients[0].completed) == 2


# --------------------------------------------------------------------------- keep-alive


async def _items_with_idle_markers() -> AsyncIterator[ChatCompletionChunk | None]:
    """What the service yields while a prefill is slow: None ("still working") before chunks."""
    for _ in range(3):
        yield None
    yield ChatCompletionChunk(
        id="chatcmpl-x", created=1, model=MODEL, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]
    )
    yield None
    yield ChatCompletionChunk(id="chatcmpl-x", created=1, model=MODEL, choices=[ChunkChoice(delta=Delta(content="hi"))])


async def test_write_stream_sends_keepalive_comments_for_idle_markers() -> None:
    parts = [part async for part in write_stream(_items_with_idle_markers(), "sse")]
    text = "".join(parts)
    assert text.startswith(": keep-alive\n\n"), text[:60]
    assert text.index(": keep-alive") < text.index("data: ")
    assert parts.count(": keep-alive\n\n") == 4
    payloads = sse_events(text)
    assert payloads[-1] == "[DONE]"
    assert [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[:-1]] == ["", "hi"]


@pytest.mark.parametrize("fmt", ["json_lines", "json_array"])
async def test_write_stream_no_keepalive_in_json_formats(fmt: str) -> None:
    parts = write_stream(_items_with_idle_markers(), fmt)  # type: ignore[arg-type]
    text = "".join([part async for part in parts])
    assert "keep-alive" not in text
    items = json.loads(text) if fmt == "json_array" else [json.loads(line) for line in text.splitlines()][:-1]
    assert [i["choices"][0]["delta"].get("content") for i in items] == ["", "hi"]


async def test_keepalive_during_slow_first_token_end_to_end(make_app: Any) -> None:
    """server.sse_keepalive_seconds: comments flow while the prefill is slow."""
    harness = await make_app(script=FakeEngineScript(first_chunk_delay=0.4), server={"sse_keepalive_seconds": 0.05})
    response = await harness.client.post(CHAT, json=chat_body(stream=True))
    text = response.text
    assert text.count(": keep-alive\n\n") >= 3, text[:300]
    first_content = text.index('"content":"Hello"')
    assert text.index(": keep-alive") < first_content
    events, _ = parse_sse(text)
    assert_chunk_stream(events, texts=CHUNKS, finish="stop")



# --------------------------------------------------------------------------- coalescing


async def _chunk_items(texts: tuple[str, ...], pause: float | None) -> AsyncIterator[ChatCompletionChunk | None]:
    """Chunks of ``texts``, all ready at once (``pause`` None) or ``pause`` seconds apart."""
    for text in texts:
        if pause is not None:
            await asyncio.sleep(pause)
        yield ChatCompletionChunk(id="chatcmpl-x", created=1, model=MODEL, choices=[ChunkChoice(delta=Delta(content=text))])


async def _body_messages(response: Any) -> list[dict[str, Any]]:
    """The ASGI body messages a response sends (a client that never hangs up)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST", "headers": []}
    await response(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    return sent[1:-1]


@pytest.mark.parametrize("fmt", ["sse", "json_lines", "json_array"])
async def test_frames_ready_together_go_in_one_body_message(fmt: str) -> None:
    """Frames that are ready at once are one ASGI message, with the bytes of the frames in order."""
    messages = await _body_messages(stream_response(_chunk_items(CHUNKS, None), fmt))  # type: ignore[arg-type]
    expected = "".join([part async for part in write_stream(_chunk_items(CHUNKS, None), fmt)])  # type: ignore[arg-type]
    assert len(messages) == 1, messages
    assert messages[0]["body"] == expected.encode() and messages[0]["more_body"] is True


async def test_a_frame_that_comes_alone_is_sent_at_once() -> None:
    """No frame waits for the next one: frames that come apart are one message each (the last
    chunk and ``[DONE]``, made together, are one)."""
    messages = await _body_messages(stream_response(_chunk_items(CHUNKS, 0.02), "sse"))
    expected = [part async for part in write_stream(_chunk_items(CHUNKS, 0.02), "sse")]
    assert [m["body"] for m in messages] == [part.encode() for part in expected[:-2]] + ["".join(expected[-2:]).encode()]


async def test_chunks_that_arrive_together_are_coalesced_end_to_end(make_app: Any) -> None:
    """A worker step that brings several chunks makes fewer body messages than frames; the
    stream is the same."""
    texts = tuple(f"t{i}" for i in range(12))
    harness = await make_app(script=FakeEngineScript(chunks=texts, chunks_per_step=4))
    async with harness.stream_client.stream("POST", CHAT, json=chat_body(stream=True)) as response:
        parts = [part async for part in response.aiter_raw()]
    received = b"".join(parts).decode()
    events, payloads = parse_sse(received)
    assert_chunk_stream(events, texts=texts, finish="stop")
    assert len(parts) < len(payloads) / 2, [len(p) for p in parts]


# --------------------------------------------------------------------------- backpressure


async def test_request_that_can_never_fit_is_400_not_429(make_app: Any) -> None:
    """More sequences than batch + queue could ever hold: no wait helps, so 400 and no load."""
    harness = await make_app(defaults={"max_batch_size": 4, "max_queue": 2, "max_n": 16})
    response = await harness.client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b", "c"], "n": 3})
    error = assert_error(response, 400, code="too_many_sequences", param="n")
    assert "9 sequences (3 prompts × n 3)" in error["message"] and "6 (max_batch_size + max_queue)" in error["message"]
    response = await harness.client.post(CHAT, json=chat_body(n=7))
    assert_error(response, 400, code="too_many_sequences", message_contains=["7 sequences (n 7)"])
    assert harness.factory.calls == 0
    assert (await harness.client.post(CHAT, json=chat_body(n=6))).status_code == 200


async def test_queue_full_is_429_with_retry(make_app: Any) -> None:
    """A request that would fit once others finish is refused with an invitation to retry."""
    harness = await make_app(script=FakeEngineScript(first_chunk_delay=0.5), defaults={"max_batch_size": 1, "max_queue": 0})
    busy = asyncio.ensure_future(harness.client.post(CHAT, json=chat_body()))
    await wait_for(lambda: harness.factory.requests)
    refused = await harness.client.post(CHAT, json=chat_body())
    assert_error(refused, 429, code="queue_full", error_type="rate_limit_error")
    assert refused.headers["retry-after"] == "1"
    assert (await busy).status_code == 200
