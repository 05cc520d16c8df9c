"""OpenAI conformance of ``/v1/chat/completions`` and ``/v1/completions`` on the real server.

Every request goes over HTTP to ``main.py`` running real MLX: through the official ``openai``
SDK where it exposes what is checked, through raw httpx where the SDK hides the wire (stream
framing, extension parameters, error envelopes). Every response body and every stream chunk is
validated against the official OpenAI schemas, and every parameter is checked for the effect it
must have on the output, not merely for being accepted.

The tiny random-weight model is deterministic (fixed weights, greedy never picks EOS), so
greedy outputs are stable and requests for N tokens produce N tokens. Its text is nonsense and
often holds lone bytes (shown as U+FFFD); stop strings are therefore picked from printable ASCII
runs of its real output. SmolLM2 answers for real; it gets only a few short requests.

"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningServer
from tests.openai_schemas import validate

pytestmark = pytest.mark.integration

TINY = "tiny-llama"
SHORT = "tiny-short"  # same weights, 48-token context
SMOL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = [CHAT, COMPLETIONS]

MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]
QWEN_TEMPLATE = "tiny-qwen-template"
"""The tiny model served with the named ``qwen`` template (see the tiny_server fixture)."""
PROMPT = "Hello"
RESPONSE_SCHEMA = {CHAT: "CreateChatCompletionResponse", COMPLETIONS: "CreateCompletionResponse"}
CHUNK_SCHEMA = {CHAT: "CreateChatCompletionStreamResponse", COMPLETIONS: "CreateCompletionStreamResponse"}
MEDIA_TYPES = {"sse": "text/event-stream", "json_lines": "application/x-ndjson", "json_array": "application/json"}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def spelled_bytes(token: str) -> bytes:
    """The bytes of a logprob token; tokens that are part of a character are spelled
    ``bytes:\\xNN…`` (as OpenAI does), so that distinct tokens keep distinct names."""
    if token.startswith("bytes:"):
        return bytes(int(h, 16) for h in token[len("bytes:") :].split("\\x")[1:])
    return token.encode("utf-8")


def joined_text(tokens: list[str]) -> str:
    return b"".join(spelled_bytes(t) for t in tokens).decode("utf-8", errors="replace")



@pytest.fixture(scope="module")
def http(tiny_server: RunningServer) -> Iterator[httpx.Client]:
    with tiny_server.client() as client:
        yield client


@pytest.fixture(scope="module")
def sdk(tiny_server: RunningServer) -> Any:
    return tiny_server.openai()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def validate_chunk(path: str, chunk: dict[str, Any]) -> None:
    """Validate a stream chunk, exactly as sent, against its schema."""
    validate(chunk, CHUNK_SCHEMA[path])


def body_for(path: str, model: str = TINY, **params: Any) -> dict[str, Any]:
    """A request body for ``path``: the default conversation or prompt, then ``params``."""
    body: dict[str, Any] = {"model": model}
    body.update({"messages": MESSAGES} if path == CHAT else {"prompt": PROMPT})
    body.update(params)
    return body


def create(http: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    """A non-streamed request that must succeed; the body is schema-validated."""
    response = http.post(path, json=body_for(path, **params))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    validate(data, RESPONSE_SCHEMA[path])
    return data


def text_of(path: str, choice: dict[str, Any]) -> str:
    return choice["message"]["content"] if path == CHAT else choice["text"]


def first_text(path: str, data: dict[str, Any]) -> str:
    assert len(data["choices"]) == 1
    return text_of(path, data["choices"][0])


def refused(http: httpx.Client, path: str, body: dict[str, Any], param: str | None, code: str | None = None) -> dict:
    """The request must get a 400 in the OpenAI error envelope naming ``param``."""
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    data = response.json()
    validate(data, "ErrorResponse")
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def stream(http: httpx.Client, path: str, fmt: str = "sse", **params: Any) -> list[dict[str, Any]]:
    """A streamed request in ``fmt``; returns the chunk objects, each schema-validated."""
    body = body_for(path, stream=True, **params)
    if fmt != "sse":
        body["streaming_format"] = fmt
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read().decode()
        assert response.headers["content-type"].startswith(MEDIA_TYPES[fmt])
        raw = response.read().decode("utf-8")
    if fmt == "sse":
        events = [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", raw[-500:]
        chunks = [json.loads(event) for event in events[:-1]]
    elif fmt == "json_lines":
        lines = [line for line in raw.split("\n") if line.strip()]
        assert json.loads(lines[-1]) == {"done": True}
        chunks = [json.loads(line) for line in lines[:-1]]
    else:
        chunks = json.loads(raw)
        assert isinstance(chunks, list)
    assert chunks
    for chunk in chunks:
        assert "error" not in chunk, chunk
        validate_chunk(path, chunk)
    return chunks


def stream_text(path: str, chunks: list[dict[str, Any]], index: int = 0) -> str:
    parts = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice["index"] == index:
                parts.append((choice["delta"].get("content") or "") if path == CHAT else choice["text"])
    return "".join(parts)


def stream_finishes(chunks: list[dict[str, Any]], index: int = 0) -> list[str]:
    return [c["finish_reason"] for ch in chunks for c in ch["choices"] if c["index"] == index and c["finish_reason"]]


def sdk_chat(sdk: Any, **params: Any) -> Any:
    """SDK chat completion; the raw body is schema-validated and the parsed object returned."""
    raw = sdk.chat.completions.with_raw_response.create(**{"model": TINY, "messages": MESSAGES, **params})
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    return raw.parse()


def sdk_chat_stream(sdk: Any, **params: Any) -> list[Any]:
    chunks = list(sdk.chat.completions.create(stream=True, **{"model": TINY, "messages": MESSAGES, **params}))
    for chunk in chunks:
        validate_chunk(CHAT, chunk.model_dump(exclude_unset=True))
    return chunks


def sdk_completion(sdk: Any, **params: Any) -> Any:
    raw = sdk.completions.with_raw_response.create(**{"model": TINY, "prompt": PROMPT, **params})
    validate(raw.http_response.json(), "CreateCompletionResponse")
    return raw.parse()


def sdk_completion_stream(sdk: Any, **params: Any) -> list[Any]:
    chunks = list(sdk.completions.create(stream=True, **{"model": TINY, "prompt": PROMPT, **params}))
    for chunk in chunks:
        validate_chunk(COMPLETIONS, chunk.model_dump(exclude_unset=True))
    return chunks


def printable_window(text: str, size: int = 3) -> str:
    """A run of ``size`` printable ASCII characters from the middle of ``text`` on."""
    for start in list(range(len(text) // 2, len(text) - size + 1)) + list(range(len(text) // 2)):
        window = text[start : start + size]
        if start > 0 and all(" " <= ch <= "~" for ch in window) and window.strip() == window:
            return window
    raise AssertionError(f"no printable run of {size} characters in {text!r}")


def single_token_id(tokenizer: Any, token: str) -> int:
    """The id whose text is ``token`` (must be unique in the tiny vocabulary)."""
    ids = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) == token]
    assert len(ids) == 1, (token, ids)
    return ids[0]


def logprob_bytes(entries: list[Any]) -> list[bytes]:
    return [bytes(entry.bytes) for entry in entries]


# ---------------------------------------------------------------------------------------------
# response and chunk shapes, field by field
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["max_tokens", "max_completion_tokens"])
def test_chat_response_fields(sdk: Any, budget: str) -> None:
    before = int(time.time())
    raw = sdk.chat.completions.with_raw_response.create(model=TINY, messages=MESSAGES, temperature=0, **{budget: 3})
    assert raw.http_response.headers["x-request-id"]
    data = raw.http_response.json()
    validate(data, "CreateChatCompletionResponse")
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert before <= data["created"] <= time.time() + 1
    assert data["model"] == TINY
    assert isinstance(data["system_fingerprint"], str) and data["system_fingerprint"]
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["message"].get("refusal") is None
    assert "tool_calls" not in choice["message"] or choice["message"]["tool_calls"] in (None, [])
    usage = data["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    parsed = raw.parse()
    assert parsed.choices[0].message.content == choice["message"]["content"]
    assert parsed.usage.completion_tokens == 3


def test_completion_response_fields(sdk: Any) -> None:
    before = int(time.time())
    raw = sdk.completions.with_raw_response.create(model=TINY, prompt=PROMPT, max_tokens=3, temperature=0)
    assert raw.http_response.headers["x-request-id"]
    data = raw.http_response.json()
    validate(data, "CreateCompletionResponse")
    assert data["id"].startswith("cmpl-")
    assert data["object"] == "text_completion"
    assert before <= data["created"] <= time.time() + 1
    assert data["model"] == TINY
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert isinstance(choice["text"], str) and choice["text"]
    usage = data["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert raw.parse().choices[0].text == choice["text"]


@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "include-usage"])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_stream_chunks(http: httpx.Client, path: str, include_usage: bool) -> None:
    full = create(http, path, max_tokens=5, temperature=0)
    params: dict[str, Any] = {"max_tokens": 5, "temperature": 0}
    if include_usage:
        params["stream_options"] = {"include_usage": True}
    chunks = stream(http, path, **params)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-" if path == CHAT else "cmpl-")
    assert len({c["created"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {TINY}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if path == CHAT else "text_completion"}
    if include_usage:
        last = chunks[-1]
        assert last["choices"] == []
        usage = last["usage"]
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert usage[key] == full["usage"][key]
        assert usage["completion_tokens"] == 5
        body = chunks[:-1]
    else:
        body = chunks
    assert all(c.get("usage") is None for c in body)
    assert all(len(c["choices"]) == 1 and c["choices"][0]["index"] == 0 for c in body)
    assert [c["choices"][0]["finish_reason"] for c in body] == [None] * (len(body) - 1) + ["length"]
    if path == CHAT:
        assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all("role" not in c["choices"][0]["delta"] for c in body[1:])
        assert body[-1]["choices"][0]["delta"] == {}
        assert sum(1 for c in body if c["choices"][0]["delta"].get("content")) >= 2  # token by token
    assert stream_text(path, chunks) == first_text(path, full)


def test_completion_chunks_validate_as_sent(http: httpx.Client) -> None:
    body = body_for(COMPLETIONS, max_tokens=3, temperature=0, stream=True)
    with http.stream("POST", COMPLETIONS, json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 2
    for event in events[:-1]:
        validate(json.loads(event), "CreateCompletionStreamResponse")


def test_sdk_streams_parse(sdk: Any) -> None:
    """The SDK's own stream parser reads both endpoints' streams, usage chunk included."""
    full = sdk_chat(sdk, max_tokens=6, temperature=0).choices[0].message.content
    chunks = sdk_chat_stream(sdk, max_tokens=6, temperature=0, stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    text = sdk_completion(sdk, max_tokens=6, temperature=0).choices[0].text
    chunks = sdk_completion_stream(sdk, max_tokens=6, temperature=0, stream_options={"include_usage": True})
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


# ---------------------------------------------------------------------------------------------
# sampling parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
def test_temperature_zero_repeats_and_seed_repeats_sampling(http: httpx.Client, path: str) -> None:
    greedy = [first_text(path, create(http, path, max_tokens=16, temperature=0)) for _ in range(2)]
    assert greedy[0] == greedy[1]

    def sample(seed: int) -> str:
        return first_text(path, create(http, path, max_tokens=16, temperature=1.0, seed=seed))

    first, again, other = sample(1234), sample(1234), sample(99)
    assert first == again
    assert first != other
    assert first != greedy[0]


@pytest.mark.parametrize(
    "narrowing", [{"top_k": 1}, {"top_p": 0.01}, {"min_p": 1.0}], ids=["top_k=1", "top_p=0.01", "min_p=1.0"]
)
@pytest.mark.parametrize("path", ENDPOINTS)
def test_narrowed_sampling_equals_greedy(http: httpx.Client, path: str, narrowing: dict[str, Any]) -> None:
    greedy = first_text(path, create(http, path, max_tokens=12, temperature=0))
    sampled = first_text(path, create(http, path, max_tokens=12, temperature=1.0, seed=7))
    assert sampled != greedy  # the control: this seed does sample away from greedy
    narrowed = first_text(path, create(http, path, max_tokens=12, temperature=1.0, seed=7, **narrowing))
    assert narrowed == greedy


@pytest.mark.parametrize("stream_it", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("as_list", [False, True], ids=["string", "list"])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_stop_truncates_before_the_stop_text(sdk: Any, path: str, as_list: bool, stream_it: bool) -> None:
    params: dict[str, Any] = {"max_tokens": 30, "temperature": 0}
    if path == CHAT:
        text = sdk_chat(sdk, **params).choices[0].message.content
    else:
        text = sdk_completion(sdk, **params).choices[0].text
    stop_text = printable_window(text)
    expected = text[: text.index(stop_text)]
    stop: str | list[str] = ["~~never~~", stop_text] if as_list else stop_text
    if stream_it:
        if path == CHAT:
            chunks = sdk_chat_stream(sdk, stop=stop, **params)
            deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        else:
            chunks = sdk_completion_stream(sdk, stop=stop, **params)
            deltas = [c.choices[0].text for c in chunks if c.choices]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        assert all(stop_text not in delta for delta in deltas)
        content = "".join(deltas)
    else:
        result = sdk_chat(sdk, stop=stop, **params) if path == CHAT else sdk_completion(sdk, stop=stop, **params)
        assert result.choices[0].finish_reason == "stop"
        content = result.choices[0].message.content if path == CHAT else result.choices[0].text
        assert 0 < result.usage.completion_tokens < 30
    assert content == expected
    assert stop_text not in content


@pytest.mark.parametrize("stream_it", [False, True], ids=["plain", "stream"])
def test_stop_text_is_not_in_logprobs(sdk: Any, stream_it: bool) -> None:
    params: dict[str, Any] = {"max_tokens": 30, "temperature": 0, "logprobs": True}
    entries = sdk_chat(sdk, **params).choices[0].logprobs.content
    tokens = [e.token for e in entries]
    # A stop string that is exactly one whole printable token, so the content ends on a token boundary.
    k = next(
        i
        for i in range(len(tokens) // 2, len(tokens))
        if len(tokens[i].strip()) >= 2
        and all(" " <= ch <= "~" for ch in tokens[i])
        and tokens[i] not in "".join(tokens[:i]) + tokens[i][:-1]
    )
    stop_text = tokens[k]
    if stream_it:
        chunks = sdk_chat_stream(sdk, stop=[stop_text], **params)
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        got = [e.token for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    else:
        result = sdk_chat(sdk, stop=[stop_text], **params)
        content = result.choices[0].message.content
        got = [e.token for e in result.choices[0].logprobs.content]
    assert content == joined_text(tokens[:k])
    assert joined_text(got) == content
    assert stop_text not in got


def test_logit_bias_bans_and_forces_tokens_chat(sdk: Any, tokenizer: Any) -> None:
    greedy = sdk_chat(sdk, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
    first = greedy.choices[0].logprobs.content[0]
    runner_up = first.top_logprobs[1]
    banned = single_token_id(tokenizer, first.token)
    result = sdk_chat(
        sdk, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2, logit_bias={str(banned): -100}
    )
    new_first = result.choices[0].logprobs.content[0]
    assert bytes(new_first.bytes) != bytes(first.bytes)
    assert bytes(new_first.bytes) == bytes(runner_up.bytes)  # greedy falls to the runner-up

    [cat] = tokenizer.encode(" cat")
    forced = sdk_chat(sdk, max_tokens=6, temperature=1.0, seed=3, logprobs=True, logit_bias={str(cat): 100})
    assert logprob_bytes(forced.choices[0].logprobs.content) == [b" cat"] * 6
    assert forced.choices[0].message.content.split() == ["cat"] * 6
    assert forced.usage.completion_tokens == 6


def test_logit_bias_bans_and_forces_tokens_completions(sdk: Any, tokenizer: Any) -> None:
    prompt = "Good software"
    greedy = sdk_completion(sdk, prompt=prompt, max_tokens=3, temperature=0, logprobs=2)
    lp = greedy.choices[0].logprobs
    runner_up = sorted(lp.top_logprobs[0].items(), key=lambda kv: -kv[1])[1][0]
    banned = single_token_id(tokenizer, lp.tokens[0])
    result = sdk_completion(sdk, prompt=prompt, max_tokens=3, temperature=0, logprobs=2, logit_bias={str(banned): -100})
    assert result.choices[0].logprobs.tokens[0] != lp.tokens[0]
    assert result.choices[0].logprobs.tokens[0] == runner_up

    [cat] = tokenizer.encode(" cat")
    forced = sdk_completion(sdk, prompt=prompt, max_tokens=6, temperature=1.0, seed=3, logit_bias={str(cat): 100})
    assert forced.choices[0].text.split() == ["cat"] * 6
    assert forced.usage.completion_tokens == 6


@pytest.mark.parametrize(
    "penalty",
    [{"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"repetition_penalty": 1.5}],
    ids=["presence", "frequency", "repetition"],
)
def test_penalties_avoid_repeating_a_token(sdk: Any, penalty: dict[str, float]) -> None:
    """Greedy output repeats a token; a penalty changes the output exactly where it repeats."""
    params: dict[str, Any] = {"max_tokens": 30, "temperature": 0, "logprobs": True}
    base = logprob_bytes(sdk_chat(sdk, **params).choices[0].logprobs.content)
    penalised = logprob_bytes(sdk_chat(sdk, extra_body=penalty, **params).choices[0].logprobs.content)
    assert penalised != base
    d = next(i for i, (a, b) in enumerate(zip(base, penalised)) if a != b)
    assert base[d] in base[:d], "the penalty changed a token that had not been generated before"
    assert penalised[d] not in penalised[:d]


def test_negative_presence_penalty_encourages_repetition(sdk: Any) -> None:
    params: dict[str, Any] = {"max_tokens": 30, "temperature": 0, "logprobs": True}
    base = logprob_bytes(sdk_chat(sdk, **params).choices[0].logprobs.content)
    repeating = logprob_bytes(sdk_chat(sdk, presence_penalty=-2.0, **params).choices[0].logprobs.content)
    assert len(set(repeating)) < len(set(base))


@pytest.mark.parametrize(
    "penalty",
    [{"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"repetition_penalty": 1.5}],
    ids=["presence", "frequency", "repetition"],
)
def test_penalties_change_completions(http: httpx.Client, penalty: dict[str, float]) -> None:
    base = first_text(COMPLETIONS, create(http, COMPLETIONS, prompt="Once upon a time", max_tokens=30, temperature=0))
    changed = create(http, COMPLETIONS, prompt="Once upon a time", max_tokens=30, temperature=0, **penalty)
    assert first_text(COMPLETIONS, changed) != base
    assert changed["usage"]["completion_tokens"] == 30


# ---------------------------------------------------------------------------------------------
# logprobs
# ---------------------------------------------------------------------------------------------


def test_chat_logprobs(sdk: Any) -> None:
    result = sdk_chat(sdk, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    choice = result.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == result.usage.completion_tokens == 8
    for entry in entries:
        assert isinstance(entry.token, str)
        assert entry.logprob <= 0
        assert entry.bytes and spelled_bytes(entry.token) == bytes(entry.bytes)
        assert len(entry.top_logprobs) == 3
        values = [top.logprob for top in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-5
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)  # greedy: the best
        assert bytes(entry.top_logprobs[0].bytes) == bytes(entry.bytes)
    assert joined_text([e.token for e in entries]) == choice.message.content

    chunks = sdk_chat_stream(sdk, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [bytes(e.bytes) for e in streamed] == [bytes(e.bytes) for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)
    assert all(len(e.top_logprobs) == 3 for e in streamed)

    plain = sdk_chat(sdk, max_tokens=3, temperature=0, logprobs=True).choices[0].logprobs.content
    assert len(plain) == 3 and all(e.top_logprobs == [] for e in plain)
    assert sdk_chat(sdk, max_tokens=3, temperature=0).choices[0].logprobs is None


def test_completion_logprobs_legacy_shape(sdk: Any) -> None:
    result = sdk_completion(sdk, max_tokens=8, temperature=0, logprobs=2)
    choice = result.choices[0]
    lp = choice.logprobs
    n = result.usage.completion_tokens
    assert n == 8
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert joined_text(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0
    for i in range(1, n):
        assert lp.text_offset[i] == lp.text_offset[i - 1] + len(joined_text([lp.tokens[i - 1]]))
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0
        assert isinstance(top, dict) and len(top) == 2
        assert max(top.values()) == pytest.approx(value, abs=1e-6)
        assert top[token] == pytest.approx(value, abs=1e-6)

    chunks = sdk_completion_stream(sdk, max_tokens=8, temperature=0, logprobs=2)
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [o for p in parts for o in p.text_offset] == lp.text_offset
    assert [v for p in parts for v in p.token_logprobs] == pytest.approx(lp.token_logprobs, abs=1e-4)


def test_completion_top_logprobs_keep_every_alternative(http: httpx.Client) -> None:
    data = create(http, COMPLETIONS, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    lp = data["choices"][0]["logprobs"]
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 2, top
        assert top[token] == pytest.approx(value, abs=1e-6)


def test_completion_keeps_the_leading_space(http: httpx.Client) -> None:
    prompt = "The weather today is"
    data = create(http, COMPLETIONS, prompt=prompt, max_tokens=6, temperature=0, logprobs=1)
    choice = data["choices"][0]
    assert choice["logprobs"]["tokens"][0].startswith(" ")
    assert choice["text"] == joined_text(choice["logprobs"]["tokens"])
    echoed = create(http, COMPLETIONS, prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert first_text(COMPLETIONS, echoed) == prompt + joined_text(choice["logprobs"]["tokens"])


def test_echo(http: httpx.Client) -> None:
    plain = first_text(COMPLETIONS, create(http, COMPLETIONS, max_tokens=6, temperature=0))
    echoed = create(http, COMPLETIONS, max_tokens=6, temperature=0, echo=True)
    assert first_text(COMPLETIONS, echoed) == PROMPT + plain
    assert echoed["usage"]["completion_tokens"] == 6
    chunks = stream(http, COMPLETIONS, max_tokens=6, temperature=0, echo=True)
    assert chunks[0]["choices"][0]["text"] == PROMPT
    assert stream_text(COMPLETIONS, chunks) == PROMPT + plain
    refused(http, COMPLETIONS, body_for(COMPLETIONS, echo=True, logprobs=1), "logprobs")


# ---------------------------------------------------------------------------------------------
# n choices
# ---------------------------------------------------------------------------------------------


def test_chat_n_choices(http: httpx.Client) -> None:
    single = create(http, CHAT, max_tokens=4, temperature=0)
    params: dict[str, Any] = {"max_tokens": 4, "temperature": 1.0, "seed": 7, "n": 3}
    data = create(http, CHAT, **params)
    choices = data["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert all(c["finish_reason"] == "length" for c in choices)
    contents = [text_of(CHAT, c) for c in choices]
    assert len(set(contents)) > 1
    assert data["usage"]["completion_tokens"] == 12
    assert data["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]  # counted once
    assert data["usage"]["total_tokens"] == single["usage"]["prompt_tokens"] + 12
    assert [text_of(CHAT, c) for c in create(http, CHAT, **params)["choices"]] == contents  # seed repeats all

    chunks = stream(http, CHAT, stream_options={"include_usage": True}, **params)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    for index in range(3):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [m["finish_reason"] for m in mine] == [None] * (len(mine) - 1) + ["length"]
        assert stream_text(CHAT, chunks, index) == contents[index]
    assert all(len(c["choices"]) == 1 for c in chunks[:-1])

    greedy = create(http, CHAT, max_tokens=4, temperature=0, n=3)
    assert [text_of(CHAT, c) for c in greedy["choices"]] == [first_text(CHAT, single)] * 3


def test_completion_n_choices(http: httpx.Client) -> None:
    params: dict[str, Any] = {"max_tokens": 4, "temperature": 1.0, "seed": 7, "n": 2}
    data = create(http, COMPLETIONS, **params)
    assert [c["index"] for c in data["choices"]] == [0, 1]
    texts = [c["text"] for c in data["choices"]]
    assert texts[0] != texts[1]
    assert data["usage"]["completion_tokens"] == 8
    chunks = stream(http, COMPLETIONS, **params)
    for index in range(2):
        assert stream_text(COMPLETIONS, chunks, index) == texts[index]
        assert stream_finishes(chunks, index) == ["length"]


# ---------------------------------------------------------------------------------------------
# completions prompts and refusals
# ---------------------------------------------------------------------------------------------


def test_completion_prompt_forms(http: httpx.Client, tokenizer: Any) -> None:
    prompts = [PROMPT, "The weather today is"]
    singles = [create(http, COMPLETIONS, prompt=p, max_tokens=4, temperature=0) for p in prompts]
    both = create(http, COMPLETIONS, prompt=prompts, max_tokens=4, temperature=0)
    assert [c["index"] for c in both["choices"]] == [0, 1]
    assert [c["text"] for c in both["choices"]] == [first_text(COMPLETIONS, s) for s in singles]
    assert both["usage"]["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in singles)
    assert both["usage"]["completion_tokens"] == 8

    # n per prompt: choices of prompt 0 first, then prompt 1.
    two_each = create(http, COMPLETIONS, prompt=prompts, max_tokens=4, temperature=0, n=2)
    assert [c["text"] for c in two_each["choices"]] == [first_text(COMPLETIONS, s) for s in singles for _ in range(2)]
    assert two_each["usage"]["prompt_tokens"] == both["usage"]["prompt_tokens"]

    ids = tokenizer.encode(PROMPT)
    by_ids = create(http, COMPLETIONS, prompt=ids, max_tokens=4, temperature=0)
    assert first_text(COMPLETIONS, by_ids) == first_text(COMPLETIONS, singles[0])
    assert by_ids["usage"]["prompt_tokens"] == len(ids) == singles[0]["usage"]["prompt_tokens"]
    lists = create(http, COMPLETIONS, prompt=[tokenizer.encode(p) for p in prompts], max_tokens=4, temperature=0)
    assert [c["text"] for c in lists["choices"]] == [c["text"] for c in both["choices"]]


def test_completion_refusals(http: httpx.Client) -> None:
    refused(http, COMPLETIONS, body_for(COMPLETIONS, suffix="the end"), "suffix")
    refused(http, COMPLETIONS, body_for(COMPLETIONS, best_of=2, n=1), "best_of")
    refused(http, COMPLETIONS, body_for(COMPLETIONS, best_of=2), "best_of")
    refused(http, COMPLETIONS, body_for(COMPLETIONS, logprobs=6), "logprobs")
    refused(http, COMPLETIONS, body_for(COMPLETIONS, prompt=[]), "prompt")
    refused(http, COMPLETIONS, body_for(COMPLETIONS, prompt=[[1, 2], []]), "prompt")
    refused(http, COMPLETIONS, body_for(COMPLETIONS, top_logprobs=2), "top_logprobs", "unknown_parameter")
    refused(http, COMPLETIONS, body_for(COMPLETIONS, messages=MESSAGES), "messages", "unknown_parameter")
    # best_of equal to n is the default behaviour, so it is accepted.
    assert create(http, COMPLETIONS, best_of=1, max_tokens=1)["usage"]["completion_tokens"] == 1


def test_completion_bad_token_prompt_names_prompt(http: httpx.Client) -> None:
    refused(http, COMPLETIONS, body_for(COMPLETIONS, prompt=[1, 999999]), "prompt")


# ---------------------------------------------------------------------------------------------
# chat messages
# ---------------------------------------------------------------------------------------------


def test_chat_roles_and_content_forms(http: httpx.Client) -> None:
    plain = create(http, CHAT, max_tokens=8, temperature=0)

    def with_first(message: dict[str, Any]) -> dict[str, Any]:
        return create(http, CHAT, messages=[message, *MESSAGES], max_tokens=8, temperature=0)

    system = with_first({"role": "system", "content": "You answer in one word."})
    developer = with_first({"role": "developer", "content": "You answer in one word."})
    assert first_text(CHAT, developer) == first_text(CHAT, system)
    assert developer["usage"]["prompt_tokens"] == system["usage"]["prompt_tokens"]
    assert system["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    assert first_text(CHAT, system) != first_text(CHAT, plain)  # the system message reaches the model

    parts = [{"type": "text", "text": "Tell me a story "}, {"type": "text", "text": "about a cat."}]
    as_parts = create(http, CHAT, messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0)
    assert first_text(CHAT, as_parts) == first_text(CHAT, plain)
    assert as_parts["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]

    named = create(http, CHAT, messages=[{**MESSAGES[0], "name": "alice"}], max_tokens=2, temperature=0)
    assert named["usage"]["completion_tokens"] == 2

    turns = [*MESSAGES, {"role": "assistant", "content": "Once upon a time."}, {"role": "user", "content": "More."}]
    longer = create(http, CHAT, messages=turns, max_tokens=2, temperature=0)
    assert longer["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_tool_call_history_reaches_the_template(http: httpx.Client) -> None:
    """An assistant turn with tool_calls (content null) and the tool's answer go into the
    template: with the Qwen template the call's name and arguments are in the prompt."""
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup_weather", "arguments": '{"city": "Paris"}'}}
    history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [call]}]
    with_result = [*history, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    base = create(http, CHAT, model=QWEN_TEMPLATE, messages=MESSAGES, max_tokens=1, temperature=0)
    called = create(http, CHAT, model=QWEN_TEMPLATE, messages=with_result, max_tokens=1, temperature=0)
    grown = called["usage"]["prompt_tokens"] - base["usage"]["prompt_tokens"]
    # <tool_call>{"name": "lookup_weather", "arguments": {"city": "Paris"}}</tool_call> plus the
    # tool response turn: many tokens with this small vocabulary.
    assert grown > 30, grown


def test_chat_message_refusals(http: httpx.Client) -> None:
    no_call_id = [*MESSAGES, {"role": "tool", "content": "42"}]
    refused(http, CHAT, body_for(CHAT, messages=no_call_id), "messages[1]")
    refused(http, CHAT, body_for(CHAT, messages=[{"role": "user", "content": None}]), "messages[0]")
    refused(http, CHAT, body_for(CHAT, messages=[{"role": "narrator", "content": "x"}]), "messages[0].role")
    extra_field = [{**MESSAGES[0], "mood": "x"}]
    refused(http, CHAT, body_for(CHAT, messages=extra_field), "messages[0].mood", "unknown_parameter")
    refused(http, CHAT, body_for(CHAT, messages=[]), "messages")
    refused(http, CHAT, {"model": TINY}, "messages", "missing_required_parameter")


def test_chat_template_kwargs(http: httpx.Client) -> None:
    error = refused(http, CHAT, body_for(CHAT, chat_template_kwargs={"add_vision_id": True}), "chat_template_kwargs")
    assert "add_vision_id" in error["message"]
    ok = create(http, CHAT, chat_template_kwargs={"enable_thinking": False}, max_tokens=2, temperature=0)  # greedy: no early EOS by chance
    assert ok["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("path", ENDPOINTS)
def test_user_and_metadata_accepted(http: httpx.Client, path: str) -> None:
    extra: dict[str, Any] = {"user": "user-1234"}
    if path == CHAT:
        extra["metadata"] = {"purpose": "conformance"}
    plain = create(http, path, max_tokens=4, temperature=0)
    tagged = create(http, path, max_tokens=4, temperature=0, **extra)
    assert first_text(path, tagged) == first_text(path, plain)


# ---------------------------------------------------------------------------------------------
# context window
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
def test_max_tokens_bounded_by_the_context(http: httpx.Client, path: str) -> None:
    data = create(http, path, model=SHORT, max_tokens=1000, temperature=0)
    usage = data["usage"]
    assert usage["total_tokens"] == 48
    assert usage["completion_tokens"] == 48 - usage["prompt_tokens"] > 0
    assert data["choices"][0]["finish_reason"] == "length"
    chunks = stream(http, path, model=SHORT, max_tokens=1000, temperature=0)
    assert stream_finishes(chunks) == ["length"]
    assert stream_text(path, chunks) == first_text(path, data)


@pytest.mark.parametrize(
    "path",
    [
        CHAT,
        COMPLETIONS,
    ],
)
def test_prompt_longer_than_the_context(http: httpx.Client, path: str) -> None:
    long = {"messages": [{"role": "user", "content": "cat " * 100}]} if path == CHAT else {"prompt": "cat " * 100}
    body = {**body_for(path, model=SHORT, max_tokens=4), **long}
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    validate(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == ("messages" if path == CHAT else "prompt")


# ---------------------------------------------------------------------------------------------
# streaming formats
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json_lines", "json_array"])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_streaming_formats_carry_the_same_chunks(http: httpx.Client, path: str, fmt: str) -> None:
    params: dict[str, Any] = {"max_tokens": 8, "temperature": 0, "stream_options": {"include_usage": True}}
    sse = stream(http, path, **params)
    other = stream(http, path, fmt, **params)
    assert stream_text(path, other) == stream_text(path, sse)
    assert len(stream_text(path, other)) > 0
    assert stream_finishes(other) == ["length"]
    assert other[-1]["choices"] == [] and other[-1]["usage"]["completion_tokens"] == 8
    assert len(other) == len(sse)


# ---------------------------------------------------------------------------------------------
# bad inputs: a 400 naming the parameter, on both endpoints
# ---------------------------------------------------------------------------------------------


BAD_INPUTS = [
    pytest.param({"temperature": 2.5}, "temperature", id="temperature-high"),
    pytest.param({"temperature": -0.1}, "temperature", id="temperature-negative"),
    pytest.param({"top_p": 0}, "top_p", id="top_p-zero"),
    pytest.param({"top_p": 1.5}, "top_p", id="top_p-high"),
    pytest.param({"top_k": -1}, "top_k", id="top_k-negative"),
    pytest.param({"top_k": 1001}, "top_k", id="top_k-high"),
    pytest.param({"min_p": 1.5}, "min_p", id="min_p-high"),
    pytest.param({"min_p": -0.1}, "min_p", id="min_p-negative"),
    pytest.param({"presence_penalty": 2.5}, "presence_penalty", id="presence_penalty-high"),
    pytest.param({"presence_penalty": -2.5}, "presence_penalty", id="presence_penalty-low"),
    pytest.param({"frequency_penalty": -3}, "frequency_penalty", id="frequency_penalty-low"),
    pytest.param({"frequency_penalty": 3}, "frequency_penalty", id="frequency_penalty-high"),
    pytest.param({"repetition_penalty": 0}, "repetition_penalty", id="repetition_penalty-zero"),
    pytest.param({"repetition_penalty": 2.5}, "repetition_penalty", id="repetition_penalty-high"),
    pytest.param({"n": 0}, "n", id="n-zero"),
    pytest.param({"n": 17}, "n", id="n-above-max_n"),
    pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens-zero"),
    pytest.param({"max_tokens": 10**9}, "max_tokens", id="max_tokens-above-limit"),
    pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "stop", id="stop-five"),
    pytest.param({"stop": "x" * 300}, "stop", id="stop-too-long"),
    pytest.param({"stop": ""}, "stop", id="stop-empty"),
    pytest.param({"stop": ["a", ""]}, "stop", id="stop-empty-in-list"),
    pytest.param(
        {"logit_bias": {"999999": 5}}, "logit_bias", id="logit_bias-outside-vocab"
    ),
    pytest.param({"logit_bias": {"cat": 5}}, "logit_bias", id="logit_bias-non-numeric"),
    pytest.param({"logit_bias": {"-1": 5}}, "logit_bias", id="logit_bias-negative-id"),
    pytest.param({"logit_bias": {"5": 101}}, "logit_bias", id="logit_bias-value-high"),
    pytest.param({"seed": "abc"}, "seed", id="seed-not-int"),
    pytest.param({"stream_options": {"include_usage": True}}, "stream_options", id="stream_options-without-stream"),
    pytest.param({"streaming_format": "xml"}, "streaming_format", id="streaming_format-unknown"),
    pytest.param({"user": "u" * 300}, "user", id="user-too-long"),
    pytest.param({"frobnicate": True}, "frobnicate", id="unknown-parameter"),
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(("params", "param"), BAD_INPUTS)
def test_bad_input_is_refused_naming_the_parameter(
    http: httpx.Client, path: str, params: dict[str, Any], param: str
) -> None:
    error = refused(http, path, body_for(path, **{"max_tokens": 2, **params}), param)
    if param == "frobnicate":
        assert error["code"] == "unknown_parameter"


CHAT_BAD_INPUTS = [
    pytest.param({"logprobs": True, "top_logprobs": 21}, "top_logprobs", id="top_logprobs-high"),
    pytest.param({"logprobs": True, "top_logprobs": -1}, "top_logprobs", id="top_logprobs-negative"),
    pytest.param({"top_logprobs": 3}, "top_logprobs", id="top_logprobs-without-logprobs"),
    pytest.param({"max_completion_tokens": 0}, "max_completion_tokens", id="max_completion_tokens-zero"),
    pytest.param({"max_completion_tokens": 10**9}, "max_completion_tokens", id="max_completion_tokens-above-limit"),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]},
        "messages[0].content",
        id="content-part-unknown-type",
    ),
    pytest.param({"prompt": "Hello"}, "prompt", id="prompt-on-chat"),
]


@pytest.mark.parametrize(("params", "param"), CHAT_BAD_INPUTS)
def test_chat_bad_input_is_refused_naming_the_parameter(http: httpx.Client, params: dict[str, Any], param: str) -> None:
    refused(http, CHAT, body_for(CHAT, **{"max_tokens": 2, **params}), param)


# ---------------------------------------------------------------------------------------------
# SmolLM2: real language, few and short requests
# ---------------------------------------------------------------------------------------------


def test_smollm2_chat_with_logprobs(smol_server: RunningServer) -> None:
    raw = smol_server.openai().chat.completions.with_raw_response.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=30,
        logprobs=True,
        top_logprobs=2,
    )
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    result = raw.parse()
    choice = result.choices[0]
    assert "Paris" in choice.message.content, choice.message.content
    assert choice.finish_reason == "stop"
    entries = choice.logprobs.content
    assert len(entries) == result.usage.completion_tokens
    assert joined_text([e.token for e in entries]) == choice.message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    paris = next(e for e in entries if "Paris" in e.token)
    assert paris.logprob > math.log(0.5)  # the model is confident about it


def test_smollm2_completion_and_stop(smol_server: RunningServer) -> None:
    client = smol_server.openai()
    prompt = "The capital of France is"
    raw = client.completions.with_raw_response.create(model=SMOL, prompt=prompt, max_tokens=5, temperature=0)
    validate(raw.http_response.json(), "CreateCompletionResponse")
    text = raw.parse().choices[0].text
    assert "Paris" in text, text
    assert "." in text, text  # "Paris." : the case for the stop test below
    raw = client.completions.with_raw_response.create(
        model=SMOL, prompt=prompt, max_tokens=20, temperature=0, stop=["."]
    )
    validate(raw.http_response.json(), "CreateCompletionResponse")
    stopped = raw.parse()
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(".")]
    assert "Paris" in stopped.choices[0].text and "." not in stopped.choices[0].text
