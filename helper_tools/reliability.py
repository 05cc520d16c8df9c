"""The reliability suite: a real server, abused in every way a client or the machine can, with figures.

Starts ``python main.py`` with a temporary config and tiny random-weight models, then runs:

malformed     a corpus of broken requests (>= 30 kinds): 0 5xx, every body the error envelope,
              p99 rejection latency, process-tree memory before and after
schemathesis  the server's own /openapi.json and the official OpenAI operations it serves,
              positive and negative examples, checks not_a_server_error, status_code_conformance
              and response_schema_conformance
disconnects   clients leaving while queued, prefilling, decoding, waiting for a non-streamed
              answer and during a model load: the slot is freed, bystanders are unaffected, the
              tokens generated for nobody are counted from the worker's own report
soak          concurrent streams of mixed lengths, some cancelled: 0 errors, 0 truncated streams
leak          many requests: memory, file descriptors and processes back to their warm baseline
swap          two models alternating under 8 clients each: exactly one load per swap, 0 lost
faults        kill -9 and SIGABRT of a worker mid-stream, a corrupt model, a model too big for
              the budget, SIGTERM with streams running: only those requests fail, with an error
              event and [DONE]; recovery time; no orphan processes
hygiene       every error body seen above: no paths, addresses, tracebacks or exception names

``--quick`` runs small counts (the form ``tests/reliability/`` runs in ``make test``); the
default is the full form documented in docs/RELIABILITY.md. Prints one table; exit status 1 when
any check failed, 2 when the suite could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

if __package__ in (None, ""):  # run as `python helper_tools/reliability.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helper_tools._common import OneLineParser, ToolError, run_tool

__all__ = [
    "FULL",
    "QUICK",
    "Forms",
    "Hygiene",
    "Row",
    "Server",
    "main",
    "make_models",
    "run_suite",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_SUBSET = REPO_ROOT / "tests" / "reliability" / "openai_spec" / "openapi.json"
NO_SPECIAL = {"0": -100, "1": -100, "2": -100}
"""logit_bias keeping the tiny models' special tokens (EOS among them) out: a stream runs to max_tokens."""
SERVED = ("tiny-a", "tiny-q", "tiny-b", "tiny-c")


@dataclass(frozen=True)
class Forms:
    """How much of each check one run does."""

    malformed_requests: int
    schemathesis_examples: int
    disconnect_rounds: int
    soak_streams: int
    soak_seconds: float
    leak_requests: int
    swap_rounds: int
    swap_clients: int = 8


QUICK = Forms(malformed_requests=0, schemathesis_examples=2, disconnect_rounds=1, soak_streams=8, soak_seconds=4.0,
              leak_requests=200, swap_rounds=2)
"""``malformed_requests`` 0: each kind once."""
FULL = Forms(malformed_requests=10_000, schemathesis_examples=200, disconnect_rounds=5, soak_streams=50,
             soak_seconds=60.0, leak_requests=10_000, swap_rounds=20)


@dataclass
class Row:
    """One check's outcome: its figures (name → value, in table order) and what failed."""

    check: str
    figures: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, message: str) -> None:
        if len(self.failures) < 50 and message not in self.failures:
            self.failures.append(message)

    @property
    def ok(self) -> bool:
        return not self.failures


# ------------------------------------------------------------------------------------- hygiene


LEAK_PATTERNS = {
    "path": re.compile(r"(?<![\w.])/(?:home|root|tmp|usr|var|opt|private|Users|work|etc)/|site-packages|\w\.py\b|[A-Z]:\\\\"),
    "address": re.compile(r"\b0x[0-9a-fA-F]{6,}\b|\bat 0x"),
    "traceback": re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"),
    "exception class": re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Exception)\b|\bTextEncodeInput\b|\bpydantic\b"),
}


class Hygiene:
    """Every error body the suite received, checked for what a user must never see."""

    def __init__(self) -> None:
        self.bodies = 0
        self.hits: list[str] = []

    def check(self, where: str, text: str) -> None:
        self.bodies += 1
        for kind, pattern in LEAK_PATTERNS.items():
            found = pattern.search(text)
            if found and len(self.hits) < 50:
                self.hits.append(f"{where}: {kind} {found.group(0)!r} in {text[:160]!r}")

    def row(self) -> Row:
        row = Row("hygiene", {"error bodies checked": str(self.bodies), "hits": str(len(self.hits))})
        for hit in self.hits:
            row.fail(hit)
        return row


def envelope_problem(body: bytes | str) -> str | None:
    """Why ``body`` is not the OpenAI error envelope, or None when it is."""
    try:
        data = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return f"no error object: {str(data)[:80]}"
    if not isinstance(error.get("message"), str) or not isinstance(error.get("type"), str):
        return f"error without message/type: {str(error)[:80]}"
    for key in ("param", "code"):
        if key not in error or not (error[key] is None or isinstance(error[key], str)):
            return f"error.{key} missing or not a string/null: {str(error)[:80]}"
    return None


# -------------------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_models(root: Path) -> Path:
    """The models folder: tiny-a, tiny-b, tiny-c (different seeds) and tiny-broken (garbage weights)."""
    from mlx_router.fabricate import make_tiny_llm

    for seed, name in enumerate(("tiny-a", "tiny-b", "tiny-c")):
        if not (root / name / "config.json").exists():
            make_tiny_llm(root / name, seed=seed)
    broken = root / "tiny-broken"
    if not broken.exists():
        shutil.copytree(root / "tiny-a", broken)
        for weights in broken.glob("model*.safetensors*"):
            weights.unlink()
        (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}" + os.urandom(4096))
    return root


def server_config(models: Path, port: int, log_file: Path) -> dict[str, Any]:
    """An explicit config: nothing here depends on the built-in defaults.

    tiny-a is the pinned default; tiny-q is tiny-a with one decode slot (to have a queue);
    tiny-b and tiny-c share the one other model slot (cache_size 2), so asking for the other
    one is a swap; tiny-huge is tiny-a declared at 1000 GB, beyond the 8 GB budget."""
    return {
        "defaults": {
            "model": "tiny-a",
            "model_directory": str(models),
            "embedded_model": False,
            "cache_size": 2,
            "memory_budget_gb": 8,
            "keep_alive": 0,
            "spare_worker": True,
            "max_tokens": 16,
            "max_tokens_limit": 512,
            "max_n": 4,
            "max_batch_size": 64,
            "max_queue": 64,
            "prefix_cache_bytes": 64 * 1024 * 1024,
            "swap_wait": 60,
            "timeout": 300,
        },
        "server": {
            "port": port,
            "log_file": str(log_file),
            "log_max_bytes": 1 << 30,
            "max_request_bytes": 1 << 20,
            "drain_timeout": 3,
        },
        "models": {
            "tiny-q": {"path": "tiny-a", "max_batch_size": 1, "max_queue": 8},
            "tiny-huge": {"path": "tiny-a", "required_memory_gb": 1000},
        },
    }


class Server:
    """One ``python main.py`` process with its config, log and process tree."""

    def __init__(self, workdir: Path, models: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "router.log"
        self.config = server_config(models, self.port, self.log_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    def start(self, wait: float = 300.0) -> None:
        config_path = self.workdir / "config.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_ROUTER_") and k != "MLX_MODEL_DIR"}
        env["HF_HUB_OFFLINE"] = "1"
        started = time.monotonic()
        with (self.workdir / "stdout.txt").open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "main.py"), "--config", str(config_path)],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        while time.monotonic() - started < wait:
            if self.process.poll() is not None:
                raise ToolError(f"the server exited with status {self.process.returncode}: {self.output()[-600:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    self.started_in = time.monotonic() - started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ToolError(f"the server was not ready within {wait:.0f} s: {self.output()[-600:]}")

    def output(self) -> str:
        path = self.workdir / "stdout.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def tree(self) -> list[psutil.Process]:
        """The router and every process below it."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        return sum(self.rss_split())

    def rss_split(self) -> tuple[int, int]:
        """Resident memory of the router process and of all its workers together."""
        router = workers = 0
        for proc in self.tree():
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            if proc.pid == self.pid:
                router += rss
            else:
                workers += rss
        return router, workers

    def fds(self) -> int:
        total = 0
        for proc in self.tree():
            try:
                total += proc.num_fds()
            except psutil.Error:
                pass
        return total

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.base_url}/v1/health", timeout=10).json())

    def worker_pid(self, model: str) -> int | None:
        for loaded in self.health().get("loaded_models", []):
            if loaded["id"] == model:
                return int(loaded["pid"]) if loaded.get("pid") else None
        return None

    def metrics(self) -> str:
        return httpx.get(f"{self.base_url}/metrics", timeout=10).text

    def in_flight(self, model: str) -> int:
        """Requests holding ``model`` plus sequences queued for it (waiting for its load included),
        from /metrics."""
        metrics = self.metrics()
        return int(sum(metric_value(metrics, name, model)
                       for name in ("mlx_router_model_in_flight", "mlx_router_model_queue_depth")))

    def loads(self) -> int:
        return int(self.health()["loads"])

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for proc in reversed(self.tree()):
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            return self.process.wait(timeout=10)


# ----------------------------------------------------------------------------------- requests


def chat(model: str, max_tokens: int, *, stream: bool = False, content: str = "Tell me a story.") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
        "temperature": 0, "logit_bias": NO_SPECIAL,
    }
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


@dataclass
class StreamResult:
    """What a client saw of one stream."""

    status: int
    events: list[str] = field(default_factory=list)
    error_bodies: list[str] = field(default_factory=list)
    done: bool = False
    finish: str | None = None
    completion_tokens: int | None = None
    content_chunks: int = 0
    request_id: str = ""

    @property
    def errored(self) -> bool:
        return self.status != 200 or bool(self.error_bodies)


async def read_stream(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    stop_after: int | None = None,
    on_token: Callable[[StreamResult], None] | None = None,
    path: str = "/v1/chat/completions",
) -> StreamResult:
    """POST a streamed request and read it to ``[DONE]`` (or leave after ``stop_after`` content chunks)."""
    async with client.stream("POST", path, json=body) as response:
        result = StreamResult(response.status_code, request_id=response.headers.get("x-request-id", ""))
        if response.status_code != 200:
            result.error_bodies.append((await response.aread()).decode(errors="replace"))
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            result.events.append(payload)
            if payload == "[DONE]":
                result.done = True
                break
            data = json.loads(payload)
            if "error" in data:
                result.error_bodies.append(payload)
                continue
            if data.get("usage"):
                result.completion_tokens = data["usage"]["completion_tokens"]
            for choice in data.get("choices", []):
                if choice.get("finish_reason"):
                    result.finish = choice["finish_reason"]
                if (choice.get("delta") or {}).get("content") or choice.get("text"):
                    result.content_chunks += 1
                    if on_token is not None:
                        on_token(result)
            if stop_after is not None and result.content_chunks >= stop_after:
                break
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def mb(size: float) -> str:
    return f"{size / 2**20:.0f} MB"


async def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> float | None:
    """Seconds until ``predicate()`` held (polled every ``interval``), or None after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - started
        await asyncio.sleep(interval)
    return None


CANCELLED_LINE = re.compile(r"^(\S+ \S+) .*request (\S+) cancelled after (\d+) generated tokens"
                            r"(?: \((\d+) after its client went away\))?", re.MULTILINE)
"""The router's log line for each sequence a worker dropped because its client left."""


@dataclass(frozen=True)
class Cancelled:
    """What a worker reported of one cancelled sequence."""

    generated: int
    after_close: int | None
    """Tokens generated after the last one the router passed on (the worker's own count)."""
    logged_at: float
    """When the router logged it (Unix time)."""


def cancelled_sequences(log: str) -> dict[str, Cancelled]:
    """Per worker request id, from the router's log."""
    return {
        m.group(2): Cancelled(int(m.group(3)), int(m.group(4)) if m.group(4) else None, _log_time(m.group(1)))
        for m in CANCELLED_LINE.finditer(log)
    }


def metric_value(metrics: str, name: str, model: str) -> float:
    """One per-model sample of the Prometheus text ``metrics`` (0 when absent)."""
    found = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _log_time(stamp: str) -> float:
    """``2026-12-04 17:36:53,694`` (the log's local time) as Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def mean_step_seconds(metrics: str, model: str) -> float:
    """Mean inter-token latency of ``model`` from /metrics (one decode step)."""
    count = metric_value(metrics, "mlx_router_inter_token_latency_seconds_count", model)
    return metric_value(metrics, "mlx_router_inter_token_latency_seconds_sum", model) / count if count else 0.0


# ----------------------------------------------------------------------------------- malformed


def _deep(opening: str, closing: str, depth: int, inner: str = "1") -> str:
    return opening * depth + inner + closing * depth


def _with(base: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**base, **changes}).encode()


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
JSON = {"content-type": "application/json"}
WRONG_TYPES: dict[str, list[Any]] = {
    "model": [1, True, [], {}],
    "messages": ["hello", 1, {}, [1], [None]],
    "max_tokens": ["16", 1.5, True, [], {}],
    "max_completion_tokens": ["16", 2.5, False],
    "temperature": ["0.5", True, [], {}],
    "top_p": ["1", False, []],
    "n": ["1", 1.5, True],
    "stream": ["yes", 1, 0, [], {}],
    "stop": [1, {}, [1, 2], True],
    "presence_penalty": ["0", True, []],
    "frequency_penalty": ["0", False, {}],
    "logit_bias": ["x", [], {"a": 1}, {"1": "x"}],
    "logprobs": ["true", 1, []],
    "top_logprobs": ["2", 1.5, True],
    "seed": ["1", 1.5, True],
    "tools": ["x", {}, [1], [{"type": "function"}]],
    "tool_choice": [1, True, {"type": "function"}, []],
    "response_format": ["json", 1, {"type": 1}, {"type": "json_schema"}],
    "user": [1, [], {}],
    "stream_options": ["x", [], {"include_usage": "yes"}],
    "parallel_tool_calls": ["yes", 1],
    "metadata": ["x", [], {"a": 1}],
    "store": ["no", 0],
}
"""Per chat field: values of a type the spec does not allow there."""


def malformed_corpus() -> list[tuple[str, str, str, dict[str, str], bytes]]:
    """(kind, method, path, headers, body) for every kind of broken request."""
    chat_ok = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    comp_ok = {"model": "tiny-a", "prompt": "hi", "max_tokens": 2}
    msgs = '[{"role":"user","content":"hi"}]'
    corpus: list[tuple[str, str, str, dict[str, str], bytes]] = []

    def add(kind: str, body: bytes, path: str = CHAT, headers: dict[str, str] | None = None, method: str = "POST") -> None:
        corpus.append((kind, method, path, JSON if headers is None else headers, body))

    for path in (CHAT, COMPLETIONS):
        add("empty body", b"", path)
        for literal in (b"null", b"[]", b"42", b'"text"', b"true", b"[1, 2, 3]"):
            add(f"body not an object ({literal.decode()})", literal, path)
        add("truncated JSON", b'{"model": "tiny-a", "messages": [', path)
        add("trailing garbage", json.dumps(chat_ok).encode() + b" xyz", path)
        add("byte order mark", b"\xef\xbb\xbf" + json.dumps(chat_ok).encode(), path)
        add("nesting 10^5 (whole body)", _deep("[", "]", 100_000).encode(), path)
        add("nesting 10^5 objects (whole body)", _deep('{"a":', "}", 100_000).encode(), path)
        add("invalid UTF-8", b'{"model": "tiny-a", "prompt": "\xff\xfe\xfd", "messages": ' + msgs.encode() + b"}", path)
        add("text/plain media type", json.dumps(chat_ok).encode(), path, {"content-type": "text/plain"})
        add("form media type", b"model=tiny-a&prompt=hi", path, {"content-type": "application/x-www-form-urlencoded"})
        add("multipart media type", b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntiny-a\r\n--b--\r\n",
            path, {"content-type": "multipart/form-data; boundary=b"})
        add("no media type", json.dumps(chat_ok).encode(), path, {})
        add("gzip encoding lie", json.dumps(chat_ok).encode(), path, {**JSON, "content-encoding": "gzip"})
        add("over max_request_bytes", b'{"model": "tiny-a", "prompt": "' + b"a" * (2 << 20) + b'"}', path)
        add("unknown route method GET", b"", path, {}, "GET")
    add("NaN", f'{{"model":"tiny-a","messages":{msgs},"temperature":NaN}}'.encode())
    add("Infinity", f'{{"model":"tiny-a","messages":{msgs},"top_p":Infinity}}'.encode())
    add("-Infinity", f'{{"model":"tiny-a","messages":{msgs},"presence_penalty":-Infinity}}'.encode())
    add("1e400 overflow", f'{{"model":"tiny-a","messages":{msgs},"max_tokens":1e400}}'.encode())
    add("integer overflow", _with(chat_ok, max_tokens=10**30))
    add("negative max_tokens", _with(chat_ok, max_tokens=-1))
    add("n too large", _with(chat_ok, n=10_000))
    add("lone surrogate (chat)", b'{"model":"tiny-a","messages":[{"role":"user","content":"a\\ud800b"}]}')
    add("lone surrogate (completions)", b'{"model":"tiny-a","prompt":"a\\udfffb","max_tokens":2}', COMPLETIONS)
    add("lone surrogate (model id)", b'{"model":"tiny-\\ud800","messages":' + msgs.encode() + b"}")
    add("NUL characters", _with(chat_ok, messages=[{"role": "user", "content": "a\u0000b"}]))
    add("duplicate keys", f'{{"model":"tiny-a","messages":{msgs},"messages":5}}'.encode())
    add("duplicate keys (completions)", b'{"model":"tiny-a","prompt":"x","prompt":[1.5]}', COMPLETIONS)
    add("nesting 10^5 in a field", f'{{"model":"tiny-a","messages":{msgs},"metadata":{_deep("[", "]", 100_000)}}}'.encode())
    deep_items = _deep('{"items":', "}", 100_000, "{}")
    add("nesting 10^5 in a tool schema", (f'{{"model":"tiny-a","messages":{msgs},"tools":[{{"type":"function",'
                                          f'"function":{{"name":"f","parameters":' + deep_items + "}}]}").encode())
    deep_schema = _deep('{"type":"array","items":', "}", 1000, '{"type":"string"}')
    add("nesting 10^3 in a JSON schema", (f'{{"model":"tiny-a","messages":{msgs},"response_format":{{"type":'
                                          f'"json_schema","json_schema":{{"name":"x","schema":' + deep_schema + "}}}").encode())
    add("huge string in limit (context overflow)", _with(chat_ok, messages=[{"role": "user", "content": "word " * 30_000}]))
    add("huge array of messages", _with(chat_ok, messages=[{"role": "user", "content": "x"}] * 20_000))
    add("huge stop array", _with(chat_ok, stop=["x"] * 50_000))
    add("huge logit_bias", _with(chat_ok, logit_bias={str(i): 1 for i in range(40_000)}))
    add("huge prompt token array", _with(comp_ok, prompt=list(range(100_000))), COMPLETIONS)
    add("token id out of vocabulary", _with(comp_ok, prompt=[10**9]), COMPLETIONS)
    add("bad base64 image", _with(chat_ok, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!not-base64!!!"}}]}]))
    add("base64 that is not an image", _with(chat_ok, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="}}]}]))
    add("image of a wrong media type", _with(chat_ok, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:text/html;base64,PGh0bWw+"}}]}]))
    add("unknown content part type", _with(chat_ok, messages=[{"role": "user", "content": [{"type": "video", "x": 1}]}]))
    add("unknown role", _with(chat_ok, messages=[{"role": "wizard", "content": "hi"}]))
    add("message without role", _with(chat_ok, messages=[{"content": "hi"}]))
    add("empty messages", _with(chat_ok, messages=[]))
    add("missing messages", _with({"model": "tiny-a"}))
    add("missing model", _with({"messages": chat_ok["messages"]}))
    add("unknown model", _with(chat_ok, model="no-such-model"))
    add("path traversal model id", _with(chat_ok, model="../../../etc/passwd"))
    add("unknown parameter", _with(chat_ok, frobnicate=True))
    add("tool schema not a schema", _with(chat_ok, tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]))
    add("tool_choice naming no tool", _with(chat_ok, tool_choice={"type": "function", "function": {"name": "nope"}}))
    add("invalid JSON schema response_format", _with(chat_ok, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}))
    add("unknown route", json.dumps(chat_ok).encode(), "/v1/chat/completion")
    add("model id path traversal (GET)", b"", "/v1/models/..%2F..%2Fetc%2Fpasswd", {}, "GET")
    for name, values in WRONG_TYPES.items():
        for value in values:
            add(f"wrong type: {name} = {json.dumps(value)}", _with(chat_ok, **{name: value}))
    for name, value in (("prompt", {"a": 1}), ("prompt", [[1.5]]), ("echo", "yes"), ("best_of", "2"), ("suffix", 1),
                        ("logprobs", True), ("max_tokens", "2")):
        add(f"wrong type (completions): {name} = {json.dumps(value)}", _with(comp_ok, **{name: value}), COMPLETIONS)
    return corpus


async def check_malformed(server: Server, hygiene: Hygiene, requests: int, concurrency: int = 8) -> Row:
    """Send the corpus (cycled to ``requests``, or each kind once when 0): no 5xx, the envelope every time."""
    corpus = malformed_corpus()
    plan = corpus if requests <= 0 else [corpus[i % len(corpus)] for i in range(max(requests, len(corpus)))]
    row = Row("malformed")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    accepted: set[str] = set()
    slowest: dict[str, float] = {}
    rss_before = server.rss_split()
    index = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal index
        while index < len(plan):
            kind, method, path, headers, body = plan[index]
            index += 1
            started = time.perf_counter()
            response = await client.request(method, path, content=body or None, headers=headers)
            latencies.append(time.perf_counter() - started)
            slowest[kind] = max(slowest.get(kind, 0.0), latencies[-1])
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                row.fail(f"{kind}: {response.status_code} {response.text[:200]}")
            if response.status_code < 400:
                accepted.add(f"{kind}: {response.status_code}")
                continue
            problem = envelope_problem(response.content)
            if problem:
                row.fail(f"{kind}: {problem}")
            hygiene.check(f"malformed {kind}", response.text)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    rss_after = server.rss_split()
    kinds = {kind.split(" = ")[0] for kind, *_ in corpus}
    row.figures = {
        "kinds": str(len(kinds)),
        "requests": str(len(plan)),
        "5xx": str(sum(n for s, n in statuses.items() if s >= 500)),
        "statuses": " ".join(f"{s}×{n}" for s, n in sorted(statuses.items())),
        "p50 / p99 / max latency": f"{percentile(latencies, 0.5) * 1000:.1f} / {percentile(latencies, 0.99) * 1000:.1f}"
                                   f" / {max(latencies) * 1000:.0f} ms",
        "slowest kinds": ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sorted(slowest.items(), key=lambda kv: -kv[1])[:3]),
        "RSS before → after (router + workers)": f"{mb(sum(rss_before))} → {mb(sum(rss_after))} "
                                                 f"({mb(rss_before[0])} + {mb(rss_before[1])} → "
                                                 f"{mb(rss_after[0])} + {mb(rss_after[1])})",
        "accepted (2xx)": ", ".join(sorted(accepted)) or "none",
    }
    for kind in sorted(accepted):
        if kind.startswith("wrong type"):
            row.fail(f"accepted a wrong type: {kind}")
    return row


# -------------------------------------------------------------------------------- schemathesis


def narrowed_official_spec(path: Path, models: tuple[str, ...]) -> Path:
    """The official subset with the request bodies' ``model`` narrowed to ``models``."""
    spec = json.loads(OFFICIAL_SUBSET.read_text())
    for name in ("CreateChatCompletionRequest", "CreateCompletionRequest"):
        schema = spec["components"]["schemas"][name]
        parts = schema.get("allOf", [schema])
        for part in parts:
            if "model" in part.get("properties", {}):
                part["properties"]["model"] = {"type": "string", "enum": list(models)}
    path.write_text(json.dumps(spec))
    return path


def run_schemathesis(server: Server, hygiene: Hygiene, row: Row, label: str, location: str,
                     examples: int, workdir: Path, extra: list[str]) -> None:
    """One ``schemathesis run``; failures per operation from its JUnit report, bodies from its HAR."""
    report = workdir / ("schemathesis-" + re.sub(r"\W+", "-", label).strip("-"))
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    command = [
        binary, "run", location, "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance",
        "--max-examples", str(examples), "--workers", "1", "--request-timeout", "120",
        "--suppress-health-check", "all", "--seed", "1", "--report", "junit,har", "--report-dir", str(report),
        "--warnings", "off", "--no-color", "--continue-on-failure", *extra,
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False, cwd=workdir,
                          env={**os.environ, "NO_COLOR": "1"})
    elapsed = time.monotonic() - started
    junits = list(report.glob("*.xml"))
    if not junits:
        row.fail(f"{label}: schemathesis produced no report (exit {done.returncode}): {(done.stdout + done.stderr)[-500:]}")
        return
    cases = failures = 0
    for case in ET.parse(junits[0]).getroot().iter("testcase"):
        cases += 1
        problems = case.findall("failure") + case.findall("error")
        if problems:
            failures += 1
            text = " ".join((p.get("message") or "") + " " + (p.text or "") for p in problems)
            row.fail(f"{label} {case.get('name')}: {' '.join(text.split())[:600]}")
    statuses = _har_statuses(report, label, hygiene)
    row.figures[label] = f"{cases} operations, {failures} failed; {sum(statuses.values())} requests in " \
        f"{elapsed:.0f} s: " + " ".join(f"{s}×{n}" for s, n in sorted(statuses.items()))


def _har_statuses(report: Path, label: str, hygiene: Hygiene) -> dict[int, int]:
    """Count the HAR's responses by status and check the body of every error response."""
    statuses: dict[int, int] = {}
    for har in report.glob("har-*.json"):
        for entry in json.loads(har.read_text()).get("log", {}).get("entries", []):
            response = entry.get("response", {})
            statuses[response.get("status", 0)] = statuses.get(response.get("status", 0), 0) + 1
            if response.get("status", 0) >= 400:
                hygiene.check(f"schemathesis {label} {entry['request']['method']} {entry['request']['url']}",
                              response.get("content", {}).get("text") or "")
    return statuses


def check_schemathesis(server: Server, hygiene: Hygiene, examples: int, workdir: Path, quick: bool = False) -> Row:
    """Both documents, positive and negative examples apart (so that the statuses of valid
    requests show). The quick form mixes them and leaves out the coverage phase, which ignores
    --max-examples."""
    row = Row("schemathesis")
    row.figures["examples per operation"] = str(examples)
    phases = ["--phases", "examples,fuzzing"] if quick else []
    official = narrowed_official_spec(workdir / "official-openapi.json", ("tiny-a",))
    documents = [
        ("own", f"{server.base_url}/openapi.json",
         # Admin actions change what the rest of the suite relies on (resident and pinned models).
         ["--exclude-path-regex", "^/v1/admin/(reload|models/.*/(load|unload|pin|unpin))$"]),
        ("official", str(official), ["--url", f"{server.base_url}/v1"]),
    ]
    for name, location, extra in documents:
        for mode in ("all",) if quick else ("positive", "negative"):
            run_schemathesis(server, hygiene, row, f"{name} {mode}", location, examples, workdir,
                             ["--mode", mode, *phases, *extra])
    return row


# --------------------------------------------------------------------------------- disconnects


BYSTANDER_TOKENS = 96
LATE_TOKENS = 32
"""Most tokens a worker may generate for a stream after its client closed the connection."""
SLOW_RELEASE = 1.0
"""Most seconds a model may stay held (router) or a sequence stay scheduled (worker) after its client left."""


async def _bystander(client: httpx.AsyncClient, model: str, tokens: int) -> StreamResult:
    return await read_stream(client, chat(model, tokens, stream=True))


async def _leave_after(seconds: float, work: Awaitable[Any]) -> None:
    """Run ``work`` and drop it (closing its connection) after ``seconds``."""
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        pass


async def check_disconnects(server: Server, hygiene: Hygiene, rounds: int) -> Row:
    """Each state ``rounds`` times: time until the model's in-flight count drops, tokens wasted."""
    row = Row("disconnects")
    freed: dict[str, list[float]] = {}
    wasted: dict[str, int] = {}
    after_leaving: list[int] = []
    long_prompt = " ".join(f"word{i % 97}" for i in range(1500))

    worker_ms: dict[str, list[float]] = {}
    missed: list[str] = []
    holders: list[asyncio.Task[StreamResult]] = []
    left_streams: list[StreamResult] = []

    async def one(state: str, model: str, leave: Callable[[httpx.AsyncClient], Awaitable[Any]], held: int = 0) -> None:
        """A tiny-a bystander streams; ``leave`` makes a client leave ``model`` in ``state``; then
        the model must hold no more than ``held`` requests again."""
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            log_before = len(server.log())
            bystander = asyncio.create_task(_bystander(client, "tiny-a", BYSTANDER_TOKENS))
            await asyncio.sleep(0.2)
            await leave(client)
            left, left_wall = time.monotonic(), time.time()
            took = await wait_for(lambda: server.in_flight(model) <= held + (model == "tiny-a" and not bystander.done()), 10.0)
            if took is None:
                row.fail(f"{state}: {model} still held {server.in_flight(model)} requests 10 s after the client left")
            else:
                freed.setdefault(state, []).append((time.monotonic() - left) * 1000)
                if took > SLOW_RELEASE:
                    row.fail(f"{state}: {model} was released {took:.2f} s after the client left")
            seen = await bystander
            if seen.errored or not seen.done or seen.completion_tokens != BYSTANDER_TOKENS:
                row.fail(f"{state}: the bystander stream on tiny-a was affected: status {seen.status}, "
                         f"{seen.completion_tokens} tokens, done={seen.done}, errors={seen.error_bodies[:1]}")
            for holder in holders:
                kept = await holder
                if kept.errored or kept.completion_tokens != 200:
                    row.fail(f"{state}: the stream holding {model}'s slot was affected ({kept.completion_tokens} tokens)")
            holders.clear()
            await asyncio.sleep(0.3)
            cancelled = cancelled_sequences(server.log()[log_before:])
            wasted[state] = wasted.get(state, 0) + sum(c.generated for c in cancelled.values())
            if cancelled:
                late = max(0.0, max(c.logged_at for c in cancelled.values()) - left_wall)
                worker_ms.setdefault(state, []).append(late * 1000)
                if late > SLOW_RELEASE:
                    row.fail(f"{state}: the worker cancelled the sequence {late:.2f} s after the client left")
            for seen in left_streams:
                found = cancelled.get(f"{seen.request_id}-0")
                if found is None:
                    row.fail(f"{state}: the worker reported no cancellation of {seen.request_id}")
                    continue
                # The worker's own count when it gives one; else what the client did not read
                # (which counts tokens sent but unread when it closed: a looser bound).
                late = found.after_close if found.after_close is not None else found.generated - seen.content_chunks
                after_leaving.append(late)
                if late > LATE_TOKENS:
                    row.fail(f"{state}: the worker generated {late} tokens after the client left")
            left_streams.clear()

    async def decoding(client: httpx.AsyncClient) -> None:
        left_streams.append(await read_stream(client, chat("tiny-a", 400, stream=True), stop_after=5))

    async def queued(client: httpx.AsyncClient) -> None:
        warm = await client.post(CHAT, json=chat("tiny-q", 1))  # resident, so that the next one waits in its queue
        if warm.status_code != 200:
            row.fail(f"queued: tiny-q did not load ({warm.status_code})")
        holders.append(asyncio.create_task(read_stream(client, chat("tiny-q", 200, stream=True))))
        await asyncio.sleep(0.3)
        await _leave_after(0.3, read_stream(client, chat("tiny-q", 50, stream=True)))

    async def prefilling(client: httpx.AsyncClient) -> None:
        await _leave_after(0.05, read_stream(client, chat("tiny-a", 50, stream=True, content=long_prompt)))

    async def non_streaming(client: httpx.AsyncClient) -> None:
        await _leave_after(0.5, client.post(CHAT, json=chat("tiny-a", 500)))

    async def leave_during_load(client: httpx.AsyncClient, body: dict[str, Any], target: str) -> None:
        await _leave_after(0.05, client.post(CHAT, json=body))
        if server.health()["models"].get(target) != "loading":  # the load beat the client: not this state
            missed.append(target)

    async def after_load(target: str) -> None:
        """The abandoned load settles and the model serves the next request."""
        took = await wait_for(lambda: server.health()["models"].get(target) in ("ready", "unloaded", "failed"), 60, 0.1)
        if took is None:
            row.fail(f"during a model load: {target} never settled after the client left")
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            response = await client.post(CHAT, json=chat(target, 4))
        if response.status_code != 200:
            row.fail(f"during a model load: the next request for {target} got {response.status_code}")

    for _ in range(rounds):
        await one("decoding", "tiny-a", decoding)
        await one("prefilling", "tiny-a", prefilling)
        await one("non-streaming", "tiny-a", non_streaming)
        await one("queued", "tiny-q", queued, held=1)
        for stream in (False, True):
            target = "tiny-c" if server.worker_pid("tiny-b") else "tiny-b"
            body = chat(target, 8, stream=stream)
            await one(f"during a model load ({'streaming' if stream else 'non-streaming'})", target,
                      lambda client, body=body, target=target: leave_during_load(client, body, target))
            await after_load(target)
    metrics = await asyncio.to_thread(server.metrics)
    step = mean_step_seconds(metrics, "tiny-a")
    for state, times in freed.items():
        cancel = f"worker cancelled within {max(worker_ms[state]):.0f} ms, " if state in worker_ms else ""
        row.figures[state] = f"router released it within {max(times):.0f} ms, {cancel}tokens wasted {wasted.get(state, 0)}"
    row.figures["mean decode step (tiny-a)"] = f"{step * 1000:.1f} ms"
    row.figures["tokens after the client left (workers' counter, /metrics)"] = ", ".join(
        f"{model} {metric_value(metrics, 'mlx_router_tokens_after_cancel_total', model):.0f}" for model in SERVED)
    if missed:
        row.figures["loads finished before the client left (state not reached)"] = str(len(missed))
    if after_leaving:
        row.figures["tokens generated after a stream left (max)"] = str(max(after_leaving))
    return row


# ---------------------------------------------------------------------------------------- soak


async def check_soak(server: Server, hygiene: Hygiene, streams: int, seconds: float, cancel: float = 0.1) -> Row:
    row = Row("soak")
    rng = random.Random(7)
    counts = {"streams": 0, "completed": 0, "cancelled": 0, "errors": 0, "truncated": 0, "tokens": 0}
    ttfts: list[float] = []
    deadline = time.monotonic() + seconds
    rss_before = server.rss()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            tokens = rng.choice((4, 16, 64, 160))
            leave = rng.random() < cancel
            counts["streams"] += 1
            first: list[float] = []

            def on_token(_result: StreamResult, first: list[float] = first, started: float = time.perf_counter()) -> None:
                if not first:
                    first.append(time.perf_counter() - started)

            try:
                seen = await read_stream(client, chat("tiny-a", tokens, stream=True),
                                         stop_after=rng.randint(1, max(1, tokens // 2)) if leave else None,
                                         on_token=on_token)
            except httpx.HTTPError as exc:
                counts["errors"] += 1
                row.fail(f"transport error: {type(exc).__name__}")
                continue
            ttfts.extend(first)
            for body in seen.error_bodies:
                hygiene.check("soak", body)
            if seen.errored:
                counts["errors"] += 1
                row.fail(f"stream error: {seen.status} {seen.error_bodies[:1]}")
            elif leave:
                counts["cancelled"] += 1
            elif not seen.done or seen.finish != "length" or seen.completion_tokens != tokens:
                counts["truncated"] += 1
                row.fail(f"truncated: done={seen.done} finish={seen.finish} tokens={seen.completion_tokens}/{tokens}")
            else:
                counts["completed"] += 1
                counts["tokens"] += tokens

    async with httpx.AsyncClient(base_url=server.base_url, timeout=300,
                                 limits=httpx.Limits(max_connections=streams + 4)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(streams)))
    await asyncio.sleep(0.5)
    if (held := server.in_flight("tiny-a")) != 0:
        row.fail(f"{held} requests still in flight after the soak")
    row.figures = {
        "concurrent streams × seconds": f"{streams} × {seconds:.0f}",
        "streams (completed / cancelled)": f"{counts['streams']} ({counts['completed']} / {counts['cancelled']})",
        "errors / truncated": f"{counts['errors']} / {counts['truncated']}",
        "tokens delivered": f"{counts['tokens']} ({counts['tokens'] / seconds:.0f} tok/s)",
        "TTFT p50 / p99": f"{percentile(ttfts, 0.5) * 1000:.0f} / {percentile(ttfts, 0.99) * 1000:.0f} ms",
        "RSS before → after": f"{mb(rss_before)} → {mb(server.rss())}",
    }
    return row


# ---------------------------------------------------------------------------------------- leak


async def check_leak(server: Server, hygiene: Hygiene, requests: int, concurrency: int = 8,
                     progress: bool = False) -> Row:
    """Mixed requests; process-tree RSS, fds and process count sampled after warm-up and at the end."""
    row = Row("leak")
    rng = random.Random(11)
    samples: list[tuple[int, int]] = []
    done = 0
    sent = 0
    warm = max(requests // 10, min(100, requests // 2))  # the quick form needs a real warm-up too
    baseline: dict[str, int] = {}

    def snapshot() -> dict[str, int]:
        mlx = metric_value(server.metrics(), "mlx_router_model_mlx_active_bytes", "tiny-a")
        return {"rss": server.rss(), "fds": server.fds(), "procs": len(server.tree()), "mlx": int(mlx)}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        kind = rng.random()
        if kind < 0.6:
            response = await client.post(CHAT, json=chat("tiny-a", rng.choice((1, 4, 8)), content=f"Question {i}?"))
            if response.status_code != 200:
                row.fail(f"chat got {response.status_code}: {response.text[:120]}")
        elif kind < 0.8:
            seen = await read_stream(client, chat("tiny-a", 8, stream=True, content=f"Story {i}"),
                                     stop_after=2 if kind < 0.65 else None)
            if seen.errored:
                row.fail(f"stream errored: {seen.error_bodies[:1]}")
        elif kind < 0.9:
            response = await client.post(COMPLETIONS, json={"model": "tiny-a", "prompt": f"Line {i}", "max_tokens": 4})
            if response.status_code != 200:
                row.fail(f"completion got {response.status_code}: {response.text[:120]}")
        else:
            response = await client.post(CHAT, content=b'{"model": "tiny-a", "messages": 5}', headers=JSON)
            if response.status_code != 400:
                row.fail(f"a malformed request got {response.status_code}")
            hygiene.check("leak", response.text)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, sent
        while sent < requests:
            sent += 1
            await one(client, sent)
            done += 1
            if done == warm:
                baseline.update(snapshot())
            if done % max(1, requests // 20) == 0:
                samples.append((done, server.rss()))
                if progress:
                    print(f"  leak: {done} requests, RSS {mb(samples[-1][1])}", flush=True)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        started = time.monotonic()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)
    end = snapshot()
    later = [(n, rss) for n, rss in samples if n >= warm]
    slope = 0.0
    if len(later) >= 3:
        xs, ys = [n for n, _ in later], [rss for _, rss in later]
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / (sum((x - mean_x) ** 2 for x in xs) or 1)
    change = (end["rss"] - baseline["rss"]) / baseline["rss"] * 100
    row.figures = {
        "requests": f"{requests} in {elapsed:.0f} s ({requests / elapsed:.0f}/s)",
        "RSS warm → end": f"{mb(baseline['rss'])} → {mb(end['rss'])} ({change:+.1f} %)",
        "RSS slope after warm-up": f"{slope * 1000 / 1024:+.1f} KB per 1000 requests",
        "fds warm → end": f"{baseline['fds']} → {end['fds']}",
        "processes warm → end": f"{baseline['procs']} → {end['procs']}",
        "MLX active memory of tiny-a's worker warm → end": f"{mb(baseline['mlx'])} → {mb(end['mlx'])} "
                                                          "(as the worker last reported it; the prefix cache is part of it)",
    }
    if abs(change) > 5:
        row.fail(f"RSS moved {change:+.1f} % from the warm baseline (limit ±5 %)")
    if end["procs"] != baseline["procs"]:
        row.fail(f"process count changed: {baseline['procs']} → {end['procs']}")
    if end["fds"] > baseline["fds"] + 4:
        row.fail(f"file descriptors grew: {baseline['fds']} → {end['fds']}")
    return row


# ---------------------------------------------------------------------------------------- swap


async def check_swap(server: Server, hygiene: Hygiene, rounds: int, clients: int) -> Row:
    """Rounds alternating tiny-b and tiny-c (one slot for both), ``clients`` at once on each round's
    model while tiny-a streams in the background: one load per swap, every request answered."""
    row = Row("hot swap")
    lost = answered = 0
    swap_times: list[float] = []
    stop = asyncio.Event()
    background: list[StreamResult] = []

    async def keep_streaming(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            background.append(await read_stream(client, chat("tiny-a", 32, stream=True)))

    async with httpx.AsyncClient(base_url=server.base_url, timeout=300,
                                 limits=httpx.Limits(max_connections=2 * clients + 8)) as client:
        warm = await client.post(CHAT, json=chat("tiny-b", 2))  # tiny-b resident: round 0 (tiny-c) is a swap
        if warm.status_code != 200:
            row.fail(f"could not load tiny-b: {warm.status_code}")
        streams = [asyncio.create_task(keep_streaming(client)) for _ in range(4)]
        loads_before = server.loads()
        for i in range(rounds):
            model = ("tiny-c", "tiny-b")[i % 2]
            started = time.monotonic()
            responses = await asyncio.gather(*(client.post(CHAT, json=chat(model, 8)) for _ in range(clients)),
                                             return_exceptions=True)
            swap_times.append(time.monotonic() - started)
            for response in responses:
                if isinstance(response, BaseException) or response.status_code != 200:
                    lost += 1
                    detail = response if isinstance(response, BaseException) else f"{response.status_code} {response.text[:160]}"
                    row.fail(f"round {i} ({model}): {detail}")
                else:
                    answered += 1
        loads = server.loads() - loads_before
        stop.set()
        await asyncio.gather(*streams)
    broken = [s for s in background if s.errored or not s.done or s.completion_tokens != 32]
    row.figures = {
        "swaps × clients": f"{rounds} × {clients}",
        "loads (expected)": f"{loads} ({rounds})",
        "answered / lost": f"{answered} / {lost}",
        "swap round p50 / max": f"{percentile(swap_times, 0.5):.2f} / {max(swap_times):.2f} s",
        "background tiny-a streams (broken)": f"{len(background)} ({len(broken)})",
    }
    if loads != rounds:
        row.fail(f"{loads} loads for {rounds} swaps")
    for seen in broken[:3]:
        row.fail(f"a background stream was affected: {seen.status} {seen.error_bodies[:1]}")
    return row


# -------------------------------------------------------------------------------------- faults


async def _kill_mid_stream(server: Server, hygiene: Hygiene, row: Row, model: str, sig: signal.Signals,
                           other: str) -> None:
    """Streams on ``model`` and ``other``; kill ``model``'s worker once tokens flow."""
    label = f"{sig.name} {model}"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        warm = await client.post(CHAT, json=chat(model, 1))
        if warm.status_code != 200:
            row.fail(f"{label}: could not load {model}: {warm.status_code}")
            return
        pid = server.worker_pid(model)
        producing = [asyncio.Event() for _ in range(3)]  # kill once every victim is streaming
        victims = [asyncio.create_task(read_stream(client, chat(model, 400, stream=True),
                                                   on_token=lambda _r, e=event: e.set())) for event in producing]
        bystanders = [asyncio.create_task(read_stream(client, chat(other, 48, stream=True))) for _ in range(2)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in producing)), 30)
        assert pid is not None
        os.kill(pid, sig)
        killed = time.monotonic()
        hit = await asyncio.gather(*victims)
        spared = await asyncio.gather(*bystanders)
        for seen in hit:
            for body in seen.error_bodies:
                hygiene.check(f"faults {label}", body)
                if envelope_problem(body):
                    row.fail(f"{label}: the error event is not the envelope: {body[:120]}")
            if not seen.error_bodies or not seen.done:
                row.fail(f"{label}: a stream of the killed worker ended without an error event and [DONE] "
                         f"(errors={len(seen.error_bodies)}, done={seen.done}, last events {seen.events[-2:]})")
        for seen in spared:
            if seen.errored or seen.completion_tokens != 48:
                row.fail(f"{label}: a stream on {other} was affected: {seen.status} {seen.error_bodies[:1]}")
        response = None
        while time.monotonic() - killed < 60:
            response = await client.post(CHAT, json=chat(model, 2))
            if response.status_code == 200:
                break
            await asyncio.sleep(0.1)
        recovery = time.monotonic() - killed
        if response is None or response.status_code != 200:
            row.fail(f"{label}: {model} did not serve again within 60 s")
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            row.fail(f"{label}: the killed worker {pid} is still there")
        row.figures[f"{label}: recovery"] = f"{recovery:.2f} s; {sum(1 for s in hit if s.error_bodies)}/3 streams " \
                                            f"got error + [DONE]; {other} unaffected"


async def _refused_model(server: Server, hygiene: Hygiene, row: Row, model: str, label: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        bystander = asyncio.create_task(read_stream(client, chat("tiny-a", 64, stream=True)))
        response = await client.post(CHAT, json=chat(model, 4))
        seen = await bystander
        hygiene.check(f"faults {label}", response.text)
        problem = envelope_problem(response.content) if response.status_code >= 400 else "it was served"
        if problem:
            row.fail(f"{label}: {response.status_code} {problem}")
        if seen.errored or seen.completion_tokens != 64:
            row.fail(f"{label}: a tiny-a stream was affected: {seen.error_bodies[:1]}")
        after = await client.post(CHAT, json=chat("tiny-a", 2))
        if after.status_code != 200:
            row.fail(f"{label}: tiny-a failed afterwards: {after.status_code}")
        code = json.loads(response.content).get("error", {}).get("code") if response.status_code >= 400 else None
        retry = response.headers.get("x-should-retry", "-")
        row.figures[label] = f"{response.status_code} {code} (x-should-retry: {retry}); others unaffected"


async def check_faults(server: Server, hygiene: Hygiene) -> Row:
    """Worker crashes, a corrupt model, a model beyond the budget (the server keeps running)."""
    row = Row("faults")
    await _kill_mid_stream(server, hygiene, row, "tiny-b", signal.SIGKILL, "tiny-a")
    await _kill_mid_stream(server, hygiene, row, "tiny-a", signal.SIGABRT, "tiny-b")
    await _refused_model(server, hygiene, row, "tiny-broken", "corrupt model")
    await _refused_model(server, hygiene, row, "tiny-huge", "model too big for the budget")
    return row


async def check_sigterm(server: Server, hygiene: Hygiene) -> Row:
    """SIGTERM with streams running: each ends with [DONE] (finished, or an error event after the
    drain timeout); the server and all its workers exit."""
    row = Row("SIGTERM")
    pids = [p.pid for p in server.tree()]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        producing = asyncio.Event()
        short = [asyncio.create_task(read_stream(client, chat("tiny-a", 64, stream=True),
                                                 on_token=lambda _r: producing.set())) for _ in range(3)]
        long = [asyncio.create_task(read_stream(client, chat("tiny-a", 512, stream=True))) for _ in range(2)]
        await asyncio.wait_for(producing.wait(), 30)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        results = await asyncio.gather(*short, *long, return_exceptions=True)
    code = await asyncio.to_thread(server.process.wait, 60)
    exited = time.monotonic() - sent
    await asyncio.sleep(0.5)
    orphans = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    finished = errored = 0
    for seen in results:
        if isinstance(seen, BaseException):
            row.fail(f"a stream broke without [DONE]: {type(seen).__name__}")
            continue
        for body in seen.error_bodies:
            hygiene.check("SIGTERM", body)
        if not seen.done:
            row.fail(f"a stream ended without [DONE] ({seen.content_chunks} chunks)")
        elif seen.error_bodies:
            errored += 1
        else:
            finished += 1
    row.figures = {
        "streams finished / ended with an error event": f"{finished} / {errored}",
        "exit status, time to exit": f"{code}, {exited:.1f} s (drain_timeout {server.config['server']['drain_timeout']} s)",
        "orphan processes": str(len(orphans)),
    }
    if code != 0:
        row.fail(f"the server exited with status {code}")
    if orphans:
        row.fail(f"orphan processes after exit: {orphans}")
    return row


# --------------------------------------------------------------------------------------- suite


CHECKS = ("malformed", "schemathesis", "disconnects", "soak", "leak", "swap", "faults", "sigterm")


async def _timed(row_future: Awaitable[Row]) -> Row:
    started = time.monotonic()
    row = await row_future
    row.seconds = time.monotonic() - started
    return row


@contextmanager
def running_server(workdir: Path) -> Iterator[Server]:
    models = make_models(workdir / "models")
    server = Server(workdir, models)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def run_suite(server: Server, forms: Forms, workdir: Path, only: tuple[str, ...] = CHECKS,
                    report: Callable[[Row], None] | None = None) -> list[Row]:
    """Run the checks named in ``only`` in order (SIGTERM last: it ends the server); the hygiene
    row comes last and covers every error body the others saw."""
    hygiene = Hygiene()
    plan: list[tuple[str, Callable[[], Awaitable[Row]]]] = [
        ("malformed", lambda: check_malformed(server, hygiene, forms.malformed_requests)),
        ("schemathesis", lambda: asyncio.to_thread(check_schemathesis, server, hygiene, forms.schemathesis_examples, workdir,
                                                     forms is QUICK)),
        ("disconnects", lambda: check_disconnects(server, hygiene, forms.disconnect_rounds)),
        ("soak", lambda: check_soak(server, hygiene, forms.soak_streams, forms.soak_seconds)),
        ("leak", lambda: check_leak(server, hygiene, forms.leak_requests)),
        ("swap", lambda: check_swap(server, hygiene, forms.swap_rounds, forms.swap_clients)),
        ("faults", lambda: check_faults(server, hygiene)),
        ("sigterm", lambda: check_sigterm(server, hygiene)),
    ]
    rows = []
    for name, check in plan:
        if name in only:
            row = await _timed(check())
            rows.append(row)
            if report:
                report(row)
    rows.append(hygiene.row())
    return rows


def table(rows: list[Row]) -> str:
    """The Markdown table of docs/RELIABILITY.md."""
    lines = ["| Check | Figures | Result |", "| --- | --- | --- |"]
    for row in rows:
        figures = "<br>".join(f"{name}: {value}" for name, value in row.figures.items())
        result = "pass" if row.ok else f"**{len(row.failures)} failure(s)**"
        lines.append(f"| {row.check} ({row.seconds:.0f} s) | {figures} | {result} |")
    failures = [f"- {row.check}: {failure}" for row in rows for failure in row.failures]
    return "\n".join(lines + ([""] + ["Failures:"] + failures if failures else []))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="reliability.py", description=__doc__.split("\n\n")[0],
                           epilog="Checks, in order: " + ", ".join(CHECKS) + ".")
    parser.add_argument("--quick", action="store_true", help="small counts (the form make test runs)")
    parser.add_argument("--only", help="comma-separated checks to run (default: all)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (models, config, log, reports)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def _run(args: argparse.Namespace) -> int:
    only = tuple(CHECKS if not args.only else (name.strip() for name in args.only.split(",")))
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        raise ToolError(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    forms = QUICK if args.quick else FULL
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="mlx-router-reliability-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with running_server(workdir) as server:
            print(f"server ready in {server.started_in:.1f} s ({'quick' if args.quick else 'full'} form)", flush=True)

            def report(row: Row) -> None:
                print(f"{row.check}: {'pass' if row.ok else 'FAIL'} in {row.seconds:.0f} s", flush=True)

            rows = asyncio.run(run_suite(server, forms, workdir, only, report))
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2))
    return 0 if all(row.ok for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
