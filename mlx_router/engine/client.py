"""Router-side handle of a worker process.

The router never imports MLX. It spawns a worker per resident model, sends it requests and
cancellations, and receives one message per decode step, which a reader thread hands to the
event loop. A worker that dies fails every request it was serving with a ``worker_crashed``
error and reports its exit to the owner through ``on_exit``.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import glob
import importlib.metadata
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from mlx_router.engine.types import (
    Admission,
    EmbeddingRequest,
    EmbeddingResult,
    EngineError,
    GenerationChunk,
    GenerationRequest,
    LoadInfo,
    WorkerMemory,
    WorkerOptions,
)

__all__ = ["EngineFailure", "WorkerClient", "how_it_ended", "openblas_library"]

logger = logging.getLogger(__name__)

_SPAWN = mp.get_context("spawn")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
"""Signals that ask a process to stop. The router never sends them to its workers (it asks over
the pipe, then kills): a worker ended by one was stopped from outside, with the router's whole
process group (Ctrl-C in a terminal, a service manager stopping the service)."""


def how_it_ended(code: int) -> str:
    """How a process ended, from its exit code (negative: the signal that ended it)."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = f" ({signal.Signals(-code).name})"
    except ValueError:
        name = ""
    verb = "stopped" if -code in STOP_SIGNALS else "killed"
    return f"was {verb} by signal {-code}{name}"


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class EngineFailure(Exception):
    """A request failed inside the engine; carries the :class:`EngineError`."""

    def __init__(self, error: EngineError) -> None:
        super().__init__(error.message)
        self.error = error


def openblas_library() -> str | None:
    """The system OpenBLAS to preload into CPU workers, if there is one.

    The ``mlx[cpu]`` wheel bundles a reference BLAS; the system's OpenBLAS makes float32
    matmuls an order of magnitude faster. Only for Linux CPU builds (not CUDA, not macOS).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        dists = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    except Exception:  # noqa: BLE001 (broken metadata must not stop the server)
        dists = set()
    if any(name.startswith("mlx-cuda") for name in dists):
        return None
    patterns = [
        "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/*-linux-gnu/libopenblas.so.0",
        "/usr/lib64/libopenblas.so.0",
    ]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    name = ctypes.util.find_library("openblas")
    return name if name and os.path.isabs(name) else None


@contextmanager
def _child_environment(extra: dict[str, str]) -> Iterator[None]:
    """Set environment variables that a spawned child inherits, then restore them."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WorkerClient:
    """One worker process serving one model."""

    def __init__(
        self,
        options: WorkerOptions,
        *,
        on_exit: Callable[[WorkerClient, str], None] | None = None,
        blas_library: str | None = None,
        pytorch: bool = False,
    ) -> None:
        self.options = options
        self.on_exit = on_exit
        self.blas_library = blas_library
        self.pytorch = pytorch
        """The process may import PyTorch (else it hides it: ``defaults.worker_pytorch``)."""
        self.load_info: LoadInfo | None = None
        self._process: Any = None
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, asyncio.Queue[Any]] = {}
        """Per request: its Admission and chunks, or its EmbeddingResult; or an EngineError."""
        self._started: asyncio.Future[LoadInfo] | None = None
        self._send_lock = threading.Lock()
        self._closing = False
        self._adopted = False
        self._spare = False
        self.exit_reason: str | None = None
        self.cancelled = 0
        """Sequences the worker dropped after a cancel."""
        self.tokens_after_cancel = 0
        """Tokens those sequences generated after the router had stopped passing them on, as
        counted by the worker."""
        self.on_cancelled: Callable[[str, int], None] | None = None
        """Called with the model id and that count for each cancelled sequence."""
        self.memory: WorkerMemory | None = None
        """MLX's memory in the worker as last reported (None before the first report, and for
        groups, whose ranks report at load only)."""
        self.warming = False
        """The worker is preparing its prefill widths in idle time (a request that arrives
        meanwhile waits for the width being prepared)."""

    @property
    def alive(self) -> bool:
        return self.exit_reason is None and self._process is not None and self._process.is_alive()

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def spawn(self, *, spare: bool = False) -> None:
        """Start the process. A spare imports MLX and waits; :meth:`start` gives it its model."""
        from mlx_router.engine.worker import worker_main

        self._expect_start()
        self._spare = spare
        parent, child = _SPAWN.Pipe(duplex=True)
        env = {"LD_PRELOAD": self.blas_library} if self.blas_library else {}
        name = "mlx-worker:spare" if spare else f"mlx-worker:{self.options.model_id}"
        self._process = _SPAWN.Process(
            target=worker_main, args=(child, None if spare else self.options, self.pytorch), name=name, daemon=True
        )
        with _child_environment(env):
            await asyncio.to_thread(self._process.start)
        child.close()
        self._conn = parent
        threading.Thread(target=self._read_loop, name="worker-reader", daemon=True).start()

    def _expect_start(self) -> asyncio.AbstractEventLoop:
        """A fresh future for the worker's "ready", or for why it never came. Nobody waits on a
        spare's, nor on one whose load was given up (timed out, cancelled): its exception is
        marked seen, so that it is never logged as "never retrieved". Returns the running loop."""
        self._loop = loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._started.add_done_callback(_mark_retrieved)
        return loop

    def adopt(self, options: WorkerOptions, on_exit: Callable[[WorkerClient, str], None] | None) -> None:
        """Give a spare process its model (loaded by the next :meth:`start`)."""
        self.options = options
        self.on_exit = on_exit
        self._adopted = True
        self._spare = False

    async def start(self, timeout: float) -> LoadInfo:
        """Load the model (spawning the process unless it is an adopted spare) and wait for it."""
        if self._process is None:
            await self.spawn()
        try:
            if self._adopted:
                try:
                    self._send(("load", self.options))
                except (OSError, ValueError):
                    pass  # the process is gone: its disconnect ends the wait below with the reason
            assert self._started is not None
            self.load_info = await asyncio.wait_for(asyncio.shield(self._started), timeout)
        except TimeoutError:
            await self.stop(grace=0)
            raise EngineFailure(
                EngineError("internal", f"loading took longer than {timeout:.0f} s and was stopped")
            ) from None
        except BaseException:
            await self.stop(grace=0)
            raise
        return self.load_info

    def _read_loop(self) -> None:
        conn, loop = self._conn, self._loop
        assert loop is not None
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # noqa: BLE001 (an unpicklable message: report and stop reading)
                logger.error("unreadable message from worker %s: %r", self.options.model_id, exc)
                break
            try:
                loop.call_soon_threadsafe(self._on_message, msg)
            except RuntimeError:  # loop closed during shutdown
                return
        try:
            loop.call_soon_threadsafe(self._on_disconnect)
        except RuntimeError:
            pass

    def _on_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "step":
            for fields in msg[1]:
                stream = self._streams.get(fields[0])
                if stream is not None:
                    stream.put_nowait(GenerationChunk(*fields))
        elif kind == "memory":
            self.memory = msg[1]
        elif kind == "warming":
            self.warming = True
        elif kind == "warmed":
            self.warming = False
            logger.info("[%s] %d prefill widths prepared in %.1f s of idle time", self.options.model_id, msg[1], msg[2])
        elif kind == "counted":
            stream = self._streams.get(msg[1])
            if stream is not None:
                stream.put_nowait(msg[2])
        elif kind in ("admitted", "embedded"):
            stream = self._streams.get(msg[1].request_id)
            if stream is not None:
                stream.put_nowait(msg[1])
        elif kind == "error":
            error: EngineError = msg[1]
            stream = self._streams.get(error.request_id or "")
            if stream is not None:
                stream.put_nowait(error)
        elif kind == "cancelled":
            logger.info(
                "[%s] request %s cancelled after %d generated tokens (%d after its client went away)",
                self.options.model_id, msg[1], msg[2], msg[3],
            )
            self.cancelled += 1
            self.tokens_after_cancel += msg[3]
            if self.on_cancelled is not None:
                self.on_cancelled(self.options.model_id, msg[3])
        elif kind == "log":
            logger.log(msg[1], "[%s] %s", self.options.model_id, msg[2])
        elif kind == "ready" and self._started is not None and not self._started.done():
            self._started.set_result(msg[1])
        elif kind == "load_failed" and self._started is not None and not self._started.done():
            self._started.set_exception(EngineFailure(EngineError(msg[1], msg[2])))

    def _on_disconnect(self) -> None:
        process = self._process
        if process is not None:
            process.join(timeout=5)
        code = process.exitcode if process is not None else None
        reason = self.exit_reason_for(code)
        self.exit_reason = reason
        if self._started is not None and not self._started.done():
            self._started.set_exception(EngineFailure(EngineError("worker_crashed", self._unready_reason(code, reason))))
        for request_id, stream in list(self._streams.items()):
            stream.put_nowait(EngineError("worker_crashed", f"the model's {reason}", request_id))
        if self.on_exit is not None:
            self.on_exit(self, reason)

    def exit_reason_for(self, code: int | None) -> str:
        """Why the worker ended, from its exit code."""
        if self._closing:
            return "stopped"
        return f"worker process {how_it_ended(code) if code is not None else 'ended'}"

    def _stopped_from_outside(self, code: int | None) -> bool:
        """Whether a stop signal ended the worker (see :data:`STOP_SIGNALS`)."""
        return code is not None and -code in STOP_SIGNALS

    def _unready_reason(self, code: int | None, reason: str) -> str:
        """Why the model never became ready: a spare that ended, a load that was stopped (by
        the router, or with the router's process group), or a load that failed."""
        if self._spare:
            return f"the spare worker ended before it was given a model: {reason}"
        if self._closing:
            return "the load was stopped"
        if self._stopped_from_outside(code):
            return f"the load was stopped: {reason}"
        return f"model load failed: {reason}"

    def _send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _open(self, request_id: str) -> asyncio.Queue[Any]:
        """Register a request's queue (its replies land there); refused when the worker is gone."""
        if not self.alive:
            raise EngineFailure(EngineError("worker_crashed", f"the model's {self.exit_reason or 'worker is not running'}"))
        stream: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[request_id] = stream
        return stream

    def _close(self, request_id: str, finished: bool, delivered: int = 0) -> None:
        """Forget a request's queue; one left before its end is cancelled in the worker
        (``delivered``: tokens the client had received, for the worker's log)."""
        self._streams.pop(request_id, None)
        if not finished and self.alive:
            try:
                self._send(("cancel", request_id, delivered))
            except (OSError, ValueError):
                pass

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Admission | GenerationChunk]:
        """The :class:`Admission` of one request, then its chunks; leaving early cancels it."""
        stream = self._open(request.request_id)
        finished = False
        delivered = 0
        try:
            self._send(("generate", request))
            while True:
                item = await stream.get()
                if isinstance(item, EngineError):
                    finished = True
                    raise EngineFailure(item)
                if isinstance(item, GenerationChunk):
                    finished = item.finish_reason is not None
                    delivered = item.completion_tokens
                yield item
                if finished:
                    return
        finally:
            self._close(request.request_id, finished, delivered)

    async def count(self, request: GenerationRequest) -> int:
        """The prompt tokens the worker would admit ``request`` with (chat template, tools and
        images included); nothing is admitted, prefilled or generated."""
        stream = self._open(request.request_id)
        try:
            self._send(("count", request))
            item = await stream.get()
        finally:
            self._close(request.request_id, finished=True)  # a count holds nothing to cancel
        if isinstance(item, EngineError):
            raise EngineFailure(item)
        return int(item)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """The vectors of one embedding request; leaving early (cancelled) cancels it."""
        stream = self._open(request.request_id)
        finished = False
        try:
            self._send(("embed", request))
            item = await stream.get()
            finished = True
            if isinstance(item, EngineError):
                raise EngineFailure(item)
            return cast(EmbeddingResult, item)  # the queue carries this request's result or its error
        finally:
            self._close(request.request_id, finished)

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the worker to exit; kill it after ``grace`` seconds, plus, unless ``grace`` is 0,
        the time it may spend writing pending prefix blocks (``prefix_cache_flush_seconds``)."""
        self._closing = True
        process = self._process
        if process is None:
            return
        if self._conn is not None and process.is_alive():
            try:
                self._send(("shutdown",))
            except (OSError, ValueError):
                pass
        wait = grace + self.options.batch.prefix_cache_flush_seconds if grace > 0 else 0.0
        await asyncio.to_thread(process.join, wait)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5)
