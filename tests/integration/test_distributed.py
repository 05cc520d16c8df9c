"""Models served by a group of two ranks on this machine (``mlx.launch --backend ring`` over
loopback), against the same weights in one process, through the real server.

Pipeline parallel (qwen2, layers split between the ranks) must give the single process's greedy
tokens exactly. Tensor parallel (llama, every layer split) sums partial products in another
order, so it is compared within a tolerance: the same greedy tokens, and every reported
log-probability (the chosen token's and its five best alternatives') within 1e-4.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mlx_router.fabricate import make_tiny_llm
from tests.integration.conftest import NO_SPECIAL, BackgroundStream, RunningServer, start_server, wait_until
from tests.openai_schemas import validate

pytestmark = pytest.mark.integration

TWO_RANKS = ["127.0.0.1", "127.0.0.1"]
MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]
PROMPTS = ["Tell me a story about a cat.", "Why is the sky blue?", "Count to ten, slowly."]
TOLERANCE = 1e-4
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
"""A template that opens the think block in the prompt: the whole answer is reasoning until </think>."""


@pytest.fixture(scope="module")
def group_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("group-server")
    models = tmp / "models"
    make_tiny_llm(models / "tq", model_type="qwen2", num_layers=4)
    make_tiny_llm(models / "tl", model_type="llama", num_layers=2)
    shutil.copytree(models / "tq", models / "tt")  # tq's weights, a template that opens <think>
    tokenizer_config = json.loads((models / "tt" / "tokenizer_config.json").read_text())
    (models / "tt" / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "chat_template": THINKING_TEMPLATE}))
    group = {"hosts": TWO_RANKS, "backend": "ring"}
    server = start_server(
        tmp,
        {
            "defaults": {
                "model": "tq",
                "model_directory": str(models),
                "embedded_model": False,
                "max_tokens": 32,
                "cache_size": 6,
                "prefix_cache_block_tokens": 8,  # the tiny prompts are shorter than the default block
            },
            "models": {
                "tq-pipe": {"path": "tq", "supports_tools": True, "distributed": {**group, "strategy": "pipeline"}},
                "tl": {"path": "tl"},
                "tl-tensor": {"path": "tl", "distributed": {**group, "strategy": "tensor", "step_timeout": 8}},
                "tt": {"reasoning_response": "enable"},
                "tt-pipe": {"path": "tt", "reasoning_response": "enable", "distributed": {**group, "strategy": "pipeline"}},
            },
        },
    )
    yield server
    server.stop()


def _chat(server: RunningServer, model: str, **body: Any) -> dict[str, Any]:
    with server.client() as http:
        response = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _tokens(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result["choices"][0]["logprobs"]["content"]


def _in_parallel(calls: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_pipeline_greedy_tokens_equal_one_process_batched(group_server: RunningServer) -> None:
    def ask(model: str, prompt: str) -> Any:
        return lambda: _chat(
            group_server, model, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0, logprobs=True
        )

    alone = [ask("tq", p)() for p in PROMPTS]
    together = _in_parallel([ask("tq-pipe", p) for p in PROMPTS])  # one batch on the group
    for single, group in zip(alone, together):
        assert [t["bytes"] for t in _tokens(group)] == [t["bytes"] for t in _tokens(single)]
        assert group["choices"][0]["message"]["content"] == single["choices"][0]["message"]["content"]
        for key in ("prompt_tokens", "completion_tokens"):
            assert group["usage"][key] == single["usage"][key]


def test_tensor_parallel_matches_one_process_within_tolerance(group_server: RunningServer) -> None:
    body = {"max_tokens": 24, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    single, group = _chat(group_server, "tl", **body), _chat(group_server, "tl-tensor", **body)
    assert [t["token"] for t in _tokens(group)] == [t["token"] for t in _tokens(single)]
    for mine, theirs in zip(_tokens(group), _tokens(single)):
        assert abs(mine["logprob"] - theirs["logprob"]) <= TOLERANCE
        assert [t["token"] for t in mine["top_logprobs"]] == [t["token"] for t in theirs["top_logprobs"]]
        for a, b in zip(mine["top_logprobs"], theirs["top_logprobs"]):
            assert abs(a["logprob"] - b["logprob"]) <= TOLERANCE


def test_seeded_sampling_is_the_single_process_sampling(group_server: RunningServer) -> None:
    body = {"max_tokens": 16, "temperature": 1.0, "seed": 1234}
    group, again, single = (_chat(group_server, m, **body) for m in ("tq-pipe", "tq-pipe", "tq"))
    assert group["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    assert group["choices"][0]["message"]["content"] == single["choices"][0]["message"]["content"]
    unseeded = _chat(group_server, "tq-pipe", max_tokens=16, temperature=1.0, logit_bias=NO_SPECIAL)
    assert unseeded["usage"]["completion_tokens"] == 16  # every rank drew the same tokens (rank 0 chose the seed)


def test_a_group_counts_tokens_as_one_process_does(group_server: RunningServer) -> None:
    """A count goes through rank 0's plan like any message and comes back once."""
    body = {"max_tokens": 1, "messages": [{"role": "user", "content": "Count me, please."}], "system": "Be brief."}
    with group_server.client() as client:
        counts = [client.post("/v1/messages/count_tokens", json={**body, "model": m}) for m in ("tq-pipe", "tq", "tq-pipe")]
        message = client.post("/v1/messages", json={**body, "model": "tq-pipe"})
    assert [c.status_code for c in counts] == [200] * 3, [c.text for c in counts]
    assert len({c.json()["input_tokens"] for c in counts}) == 1
    usage = message.json()["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == counts[0].json()["input_tokens"]


def test_stream_stop_string_and_prefix_cache_on_a_group(group_server: RunningServer) -> None:
    client = group_server.openai()
    full = client.chat.completions.create(model="tq-pipe", messages=MESSAGES, max_tokens=30, temperature=0)
    text = full.choices[0].message.content or ""
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    chunks = list(
        client.chat.completions.create(
            model="tq-pipe", messages=MESSAGES, max_tokens=30, temperature=0, stop=[stop], stream=True,
            stream_options={"include_usage": True},
        )
    )
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[: text.index(stop)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens > 0  # the first request's KV, kept on every rank


def test_constrained_output_and_tool_calls_on_a_group(group_server: RunningServer) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "boolean"}}, "required": ["n"], "additionalProperties": False}
    answer = _chat(
        group_server, "tq-pipe", max_tokens=24, temperature=1.0, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
    )
    jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), schema)
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}}, "required": ["city"], "additionalProperties": False}},
    }
    called = _chat(group_server, "tq-pipe", max_tokens=120, temperature=0, tools=[weather], tool_choice="required", parallel_tool_calls=False)
    choice = called["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_reasoning_is_separated_on_a_group_as_in_one_process(group_server: RunningServer) -> None:
    client = group_server.openai()

    def ask(model: str, stream: bool) -> tuple[str, str, list[bytes]]:
        kwargs: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 12, "temperature": 0, "logprobs": True}
        if not stream:
            choice = client.chat.completions.create(**kwargs).choices[0]
            assert choice.logprobs is not None and choice.logprobs.content is not None
            tokens = [bytes(t.bytes or []) for t in choice.logprobs.content]
            return choice.message.content or "", getattr(choice.message, "reasoning_content", None) or "", tokens
        chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks)
        logprobs = [c.choices[0].logprobs.content or [] for c in chunks if c.choices[0].logprobs is not None]
        return content, reasoning, [bytes(t.bytes or []) for part in logprobs for t in part]

    single = ask("tt", stream=False)
    content, reasoning, tokens = single
    assert content == "" and reasoning  # every token is inside the think block the prompt opened
    assert b"".join(tokens).decode(errors="replace") == reasoning
    assert ask("tt-pipe", stream=False) == single
    assert ask("tt-pipe", stream=True) == single


def test_cancelled_stream_leaves_the_group_serving(group_server: RunningServer) -> None:
    body = {"model": "tq-pipe", "messages": MESSAGES, "max_tokens": 2000, "stream": True, "logit_bias": NO_SPECIAL}
    with group_server.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if '"content":"' in line:
                break  # leave mid-stream: the request is cancelled on every rank
    assert wait_until(lambda: "cancelled after" in group_server.log(), timeout=20)
    assert _chat(group_server, "tq-pipe", max_tokens=4)["usage"]["completion_tokens"] == 4


def test_listing_status_and_metrics_show_the_group(group_server: RunningServer) -> None:
    _chat(group_server, "tq-pipe", max_tokens=2)
    with group_server.client() as http:
        card = http.get("/v1/models/tq-pipe").json()
        row = next(m for m in http.get("/v1/status").json()["models"] if m["id"] == "tq-pipe")
        metrics = http.get("/metrics").text
        single = http.get("/v1/models/tq").json()
    group = card["distributed"]
    assert card["state"] == "ready"
    assert group["backend"] == "ring" and group["strategy"] == "pipeline" and group["hosts"] == TWO_RANKS
    assert [r["rank"] for r in group["ranks"]] == [0, 1]
    assert all(r["host"] == "127.0.0.1" and _alive(r["pid"]) for r in group["ranks"])
    assert row["distributed"] == group
    assert single["distributed"] is None
    assert 'model="tq-pipe"' in metrics


def test_killed_rank_fails_the_stream_leaves_no_process_and_restarts(group_server: RunningServer) -> None:
    _chat(group_server, "tl-tensor", max_tokens=2)
    with group_server.client() as http:
        ranks = http.get("/v1/models/tl-tensor").json()["distributed"]["ranks"]
        launcher = next(m for m in http.get("/v1/status").json()["models"] if m["id"] == "tl-tensor")["pid"]
    pids = [r["pid"] for r in ranks] + [launcher]
    stream = BackgroundStream(
        group_server, {"model": "tl-tensor", "messages": MESSAGES, "max_tokens": 5000, "stream": True, "logit_bias": NO_SPECIAL}
    )
    assert stream.producing.wait(60)
    os.kill(ranks[1]["pid"], signal.SIGKILL)
    stream.join(60)
    assert stream.events[-1] == "[DONE]"
    error = json.loads(stream.events[-2])["error"]
    assert error["code"] == "worker_crashed"
    validate({"error": error}, "ErrorResponse")
    assert wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=15), [p for p in pids if _alive(p)]
    again = _chat(group_server, "tl-tensor", max_tokens=4)
    assert again["usage"]["completion_tokens"] == 4
    with group_server.client() as http:
        fresh = http.get("/v1/models/tl-tensor").json()["distributed"]["ranks"]
    assert {r["pid"] for r in fresh}.isdisjoint(pids)


def test_a_silent_rank_stops_the_group_after_step_timeout(group_server: RunningServer) -> None:
    """A stopped process answers nothing and closes nothing, like a host whose cable was pulled."""
    _chat(group_server, "tl-tensor", max_tokens=2)
    with group_server.client() as http:
        ranks = http.get("/v1/models/tl-tensor").json()["distributed"]["ranks"]
    stream = BackgroundStream(
        group_server, {"model": "tl-tensor", "messages": MESSAGES, "max_tokens": 5000, "stream": True, "logit_bias": NO_SPECIAL}
    )
    assert stream.producing.wait(60)
    os.kill(ranks[1]["pid"], signal.SIGSTOP)
    stream.join(60)
    assert not stream.running
    assert stream.events[-1] == "[DONE]"
    error = json.loads(stream.events[-2])["error"]
    assert error["code"] == "worker_crashed"
    assert "no answer from the group for" in error["message"]
    assert wait_until(lambda: not any(_alive(r["pid"]) for r in ranks), timeout=15)
    with group_server.client() as http:
        card = http.get("/v1/models/tl-tensor").json()
    assert card["state"] == "failed" and "rank 0 on 127.0.0.1 exited with code 3" in card["failure_reason"]


BROKEN = {
    "missing-python": ({"python": "/nonexistent/bin/python3"}, "host 127.0.0.1: no Python at"),
    "unreachable-host": ({"hosts": ["192.0.2.1", "192.0.2.1"], "connect_timeout": 1}, "host 192.0.2.1 is unreachable over ssh"),
    "busy-port": ({}, "is busy (distributed.port)"),
}


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Groups that cannot start: no Python there, a host that does not answer, a busy port."""
    tmp = tmp_path_factory.mktemp("broken-groups")
    make_tiny_llm(tmp / "models" / "tq", model_type="qwen2", num_layers=2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = {"busy-port": {"port": busy.getsockname()[1]}}
        models = {
            name: {"path": "tq", "distributed": {"hosts": TWO_RANKS, "strategy": "pipeline", **group, **port.get(name, {})}}
            for name, (group, _) in BROKEN.items()
        }
        server = start_server(
            tmp,
            {
                "defaults": {"model": "tq", "model_directory": str(tmp / "models"), "embedded_model": False, "cache_size": 2},
                "models": models,
            },
        )
        yield server
        server.stop()


@pytest.mark.parametrize("model", list(BROKEN))
def test_a_group_that_cannot_start_is_a_load_failure_naming_host_and_reason(broken_server: RunningServer, model: str) -> None:
    expected = BROKEN[model][1]
    with broken_server.client() as http:
        response = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 2})
        assert response.status_code == 503, response.text
        assert expected in response.json()["error"]["message"]
        card = http.get(f"/v1/models/{model}").json()
    assert card["state"] == "failed" and expected in card["failure_reason"]
