"""A scripted fake of the engine, for API-level tests of errors, timing and cancellation.

Nothing here generates text: :class:`FakeWorkerClient` replays the strings of a
:class:`FakeEngineScript` as if they were decode steps, so the HTTP layer, the manager's
lifecycle and the stream writers can be tested fast and deterministically. Tests that need a
real model use the tiny models of ``mlx_router.fabricate`` through the real ``WorkerClient``.

    factory = fake_client_factory(FakeEngineScript(chunks=("Hi", "!"), prompt_tokens=5))
    manager = MLXModelManager(settings, client_factory=factory)
    ...
    assert factory.cancellations == [request_id]

The factory records every client it made, every request and every cancellation (a request
whose generator the consumer closed, or cancelled, before its last chunk).

Also here: :class:`StreamingASGITransport`, an httpx transport that hands the response to the
test while the app is still sending it (httpx's own ``ASGITransport`` buffers the whole body
and never reports a client disconnect), so tests can read a stream incrementally and hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlx_router.engine.client import EngineFailure
from mlx_router.engine.types import (
    Admission,
    EmbeddingRequest,
    EmbeddingResult,
    EngineError,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    LoadInfo,
    WorkerMemory,
    WorkerOptions,
)

__all__ = [
    "CRASH_REASON",
    "MODEL",
    "FakeClientFactory",
    "FakeEngineScript",
    "FakeWorkerClient",
    "StreamingASGITransport",
    "chat_body",
    "fake_client_factory",
]

CRASH_REASON = "worker process was killed by signal 9 (SIGKILL)"
MODEL = "tiny-llama"
"""The model in the ``tiny_models_root`` fixture's folder."""


def chat_body(**overrides: Any) -> dict[str, Any]:
    """A minimal valid chat request for :data:`MODEL`; ``overrides`` replace or add keys."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    body.update(overrides)
    return body


@dataclass
class FakeEngineScript:
    """What every fake worker made by one factory does.

    Chunk ``i`` carries ``chunks[i]`` and ``completion_tokens = i + 1``; the last chunk carries
    ``finish_reason``. Faults (``admission_error``, ``error_after``, ``crash_after``) apply to
    the first ``faulty_requests`` requests the factory sees (counted across all its clients),
    or to every request when that is None, so a test can check that the next request succeeds.
    """

    chunks: Sequence[str] = ("Hello", ",", " world", "!")
    prompt_tokens: int = 7
    finish_reason: FinishReason = "stop"
    # start()
    start_delay: float = 0.0
    start_error: EngineError | None = None
    """start() raises EngineFailure(start_error) after start_delay."""
    weight_bytes: int = 1234
    memory: WorkerMemory | None = None
    """What the loaded fake reports as MLX's memory (``client.memory``)."""
    context_length: int = 2048
    backend: str = "cpu"
    # generate()
    admission_delay: float = 0.0
    """Seconds before the Admission (tokenizing, waiting for a batch slot)."""
    admission_error: EngineError | None = None
    """Raised instead of the Admission (e.g. kind ``context_length``)."""
    first_chunk_delay: float = 0.0
    """Seconds between the Admission and the first chunk (prefill)."""
    chunk_delay: float = 0.0
    """Seconds before each later chunk (decode steps)."""
    chunks_per_step: int = 1
    """Chunks delivered back to back, with no pause between them: several decode steps that
    reach the router at once, as when it is behind its worker."""
    error_after: int | None = None
    """Raise EngineFailure(error) after this many chunks were yielded."""
    error: EngineError = field(default_factory=lambda: EngineError("internal", "scripted engine failure"))
    crash_after: int | None = None
    """After this many chunks: the worker 'dies' (on_exit is called) and the request fails."""
    faulty_requests: int | None = None
    tool_format: str = "hermes"
    """The call syntax the fake model's template teaches (reported when tools are offered)."""
    # embed()
    embedding_width: int = 8
    """Values per fake embedding: input ``i`` gets the unit vector along axis ``i % width``."""


class FakeWorkerClient:
    """Stands in for :class:`mlx_router.engine.client.WorkerClient` (same interface)."""

    _next_pid = 90_000

    def __init__(
        self,
        options: WorkerOptions,
        on_exit: Callable[[Any, str], None] | None = None,
        *,
        script: FakeEngineScript | None = None,
        factory: FakeClientFactory | None = None,
    ) -> None:
        self.options = options
        self.on_exit = on_exit
        self.script = script or FakeEngineScript()
        self.factory = factory
        FakeWorkerClient._next_pid += 1
        self.pid: int | None = FakeWorkerClient._next_pid
        self.started = False
        self.stopped = False
        self.crashed = False
        self.exit_reason: str | None = None
        self.load_info: LoadInfo | None = None
        self.memory: WorkerMemory | None = None
        self.requests: list[GenerationRequest] = []
        self.cancellations: list[str] = []
        self.completed: list[str] = []
        self.embedding_requests: list[EmbeddingRequest] = []
        self.counted: list[GenerationRequest] = []
        """Requests given to :meth:`count` (never to :attr:`requests`: nothing is admitted)."""
        self._streams: set[str] = set()

    # -------------------------------------------------------------- WorkerClient interface

    @property
    def alive(self) -> bool:
        return self.started and not self.stopped and not self.crashed

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    async def start(self, timeout: float) -> LoadInfo:
        script = self.script
        try:
            await asyncio.wait_for(asyncio.sleep(script.start_delay), timeout)
        except TimeoutError:
            raise EngineFailure(
                EngineError("internal", f"loading took longer than {timeout:.0f} s and was stopped")
            ) from None
        if script.start_error is not None:
            raise EngineFailure(script.start_error)
        self.started = True
        self.memory = script.memory
        self.load_info = LoadInfo(
            load_seconds=script.start_delay,
            weight_bytes=script.weight_bytes,
            context_length=script.context_length,
            eos_token_ids=(2,),
            has_chat_template=True,
            backend=script.backend,
        )
        return self.load_info

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Admission | GenerationChunk]:
        if not self.alive:
            raise EngineFailure(
                EngineError("worker_crashed", f"the model's {self.exit_reason or 'worker is not running'}")
            )
        script = self.script
        index = self.factory._count_request(request) if self.factory is not None else len(self.requests)
        faulty = script.faulty_requests is None or index < script.faulty_requests
        self.requests.append(request)
        rid = request.request_id
        self._streams.add(rid)
        finished = False
        try:
            await asyncio.sleep(script.admission_delay)
            if faulty and script.admission_error is not None:
                finished = True
                error = script.admission_error
                raise EngineFailure(EngineError(error.kind, error.message, rid))
            max_tokens = min(request.params.max_tokens, len(script.chunks))
            tool_format = (request.tool_format or script.tool_format) if request.tools else None
            yield Admission(rid, script.prompt_tokens, request.params.max_tokens, tool_format=tool_format)
            texts = list(script.chunks)[:max_tokens]
            finish: FinishReason = script.finish_reason if max_tokens >= len(script.chunks) else "length"
            for i, text in enumerate(texts):
                if faulty and script.crash_after is not None and i == script.crash_after:
                    finished = True
                    self._crash()
                    raise EngineFailure(EngineError("worker_crashed", f"the model's {CRASH_REASON}", rid))
                if faulty and script.error_after is not None and i == script.error_after:
                    finished = True
                    raise EngineFailure(EngineError(script.error.kind, script.error.message, rid))
                if i % script.chunks_per_step == 0:
                    await asyncio.sleep(script.first_chunk_delay if i == 0 else script.chunk_delay)
                last = i == len(texts) - 1
                if last:
                    finished = True
                    self.completed.append(rid)
                yield GenerationChunk(
                    request_id=rid,
                    text=text,
                    completion_tokens=i + 1,
                    prompt_tokens=script.prompt_tokens,
                    finish_reason=finish if last else None,
                )
        finally:
            self._streams.discard(rid)
            if not finished:
                self.cancellations.append(rid)
                if self.factory is not None:
                    self.factory.cancellations.append(rid)

    async def count(self, request: GenerationRequest) -> int:
        """The script's ``prompt_tokens`` (what its admissions report); ``admission_delay`` and
        ``admission_error`` apply."""
        if not self.alive:
            raise EngineFailure(EngineError("worker_crashed", f"the model's {self.exit_reason or 'worker is not running'}"))
        self.counted.append(request)
        await asyncio.sleep(self.script.admission_delay)
        error = self.script.admission_error
        if error is not None:
            raise EngineFailure(EngineError(error.kind, error.message, request.request_id))
        return self.script.prompt_tokens

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Unit vectors (input ``i`` along axis ``i``), one "token" per word or id; the script's
        ``admission_delay`` and ``admission_error`` apply."""
        if not self.alive:
            raise EngineFailure(EngineError("worker_crashed", f"the model's {self.exit_reason or 'worker is not running'}"))
        script = self.script
        self.embedding_requests.append(request)
        rid = request.request_id
        self._streams.add(rid)
        finished = False
        try:
            await asyncio.sleep(script.admission_delay)
            finished = True
            if script.admission_error is not None:
                raise EngineFailure(EngineError(script.admission_error.kind, script.admission_error.message, rid))
            width = request.dimensions or script.embedding_width
            vectors = tuple(
                struct.pack(f"<{width}f", *(1.0 if axis == i % width else 0.0 for axis in range(width)))
                for i in range(len(request.inputs))
            )
            tokens = sum(len(item.split()) if isinstance(item, str) else len(item) for item in request.inputs)
            return EmbeddingResult(rid, vectors, tokens)
        finally:
            self._streams.discard(rid)
            if not finished:
                self.cancellations.append(rid)

    async def stop(self, grace: float = 5.0) -> None:
        self.stopped = True
        self.exit_reason = self.exit_reason or "stopped"

    # -------------------------------------------------------------- helpers

    def _crash(self) -> None:
        self.crashed = True
        self.exit_reason = CRASH_REASON
        if self.on_exit is not None:
            self.on_exit(self, CRASH_REASON)


class FakeClientFactory:
    """``(options, on_exit) -> FakeWorkerClient``; records what it made and saw."""

    def __init__(self, script: FakeEngineScript) -> None:
        self.script = script
        self.clients: list[FakeWorkerClient] = []
        self.requests: list[GenerationRequest] = []
        self.cancellations: list[str] = []

    def __call__(self, options: WorkerOptions, on_exit: Callable[[Any, str], None]) -> FakeWorkerClient:
        client = FakeWorkerClient(options, on_exit, script=self.script, factory=self)
        self.clients.append(client)
        return client

    @property
    def calls(self) -> int:
        return len(self.clients)

    def _count_request(self, request: GenerationRequest) -> int:
        self.requests.append(request)
        return len(self.requests) - 1


def fake_client_factory(script: FakeEngineScript | None = None) -> FakeClientFactory:
    """A client factory for ``MLXModelManager(settings, client_factory=...)``."""
    return FakeClientFactory(script or FakeEngineScript())


# ---------------------------------------------------------------------------------------------
# A streaming ASGI transport for httpx
# ---------------------------------------------------------------------------------------------


class _AppStream(httpx.AsyncByteStream):
    def __init__(self, queue: asyncio.Queue[bytes | None], disconnect: asyncio.Event, task: asyncio.Task[None]):
        self._queue = queue
        self._disconnect = disconnect
        self._task = task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            part = await self._queue.get()
            if part is None:
                return
            yield part

    async def aclose(self) -> None:
        """The client hangs up: the app's next receive() returns http.disconnect."""
        self._disconnect.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5.0)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Like ``httpx.ASGITransport`` but the body streams, and closing it early disconnects."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        body = b"".join([part async for part in request.stream])
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # what uvicorn's HTTP protocols report
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for (k, v) in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": ("127.0.0.1", 12345),
            "root_path": "",
        }
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = asyncio.get_running_loop().create_future()
        disconnect = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if disconnect.is_set():
                return  # as uvicorn does for ASGI spec < 2.4: sends after a disconnect are dropped
            if message["type"] == "http.response.start":
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    queue.put_nowait(message["body"])
                if not message.get("more_body", False):
                    queue.put_nowait(None)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                queue.put_nowait(None)

        task = asyncio.ensure_future(run())
        try:
            status, headers = await started
        except BaseException:
            with contextlib.suppress(BaseException):
                await task
            raise
        return httpx.Response(status, headers=headers, stream=_AppStream(queue, disconnect, task), request=request)


# ---------------------------------------------------------------------------------------------
# Assertions shared by the API tests
# ---------------------------------------------------------------------------------------------

_UNSET: Any = object()
LEAK_MARKERS = (
    "Traceback",
    'File "',
    "site-packages",
    ".py\", line",
    "/work/",
    "/tmp/",
    "/home/",
    "/Users/",
    "/var/folders/",
    "/private/",
)
"""Strings that must never appear in an error body (stack traces, filesystem paths)."""


def assert_no_leaks(text: str, *extra: str) -> None:
    for marker in (*LEAK_MARKERS, *extra):
        assert marker not in text, f"error body leaks {marker!r}: {text}"


def assert_error(
    response: httpx.Response,
    status: int,
    *,
    code: str | None = _UNSET,
    param: str | None = _UNSET,
    error_type: str | None = _UNSET,
    message_contains: Sequence[str] = (),
    leaks: Sequence[str] = (),
    retry: bool | None = None,
) -> dict[str, Any]:
    """``response`` is the OpenAI error envelope with this status (and code/param/type if given).

    Also checks it validates against the official ``ErrorResponse`` schema, is JSON, is never
    FastAPI's ``{"detail": ...}`` and carries no traceback or path (``leaks``: more strings),
    and that ``x-should-retry`` invites a retry (with ``Retry-After``) only for a transient
    error: ``retry``, or by default 429 and 503 other than a failed model load.
    Returns the ``error`` object.
    """
    from tests.openai_schemas import validate

    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert "detail" not in body, body
    assert set(body) == {"error"}, body
    validate(body, "ErrorResponse")
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"].strip(), error
    if code is not _UNSET:
        assert error["code"] == code, error
    if param is not _UNSET:
        assert error["param"] == param, error
    if error_type is not _UNSET:
        assert error["type"] == error_type, error
    for part in message_contains:
        assert part in error["message"], f"{part!r} not in {error['message']!r}"
    if retry is None:
        retry = status in (429, 503) and error["code"] != "model_load_failed"
    assert response.headers.get("x-should-retry") == ("true" if retry else "false"), dict(response.headers)
    assert ("retry-after" in response.headers) == retry, dict(response.headers)
    assert_no_leaks(response.text, *leaks)
    return error  # type: ignore[no-any-return]
