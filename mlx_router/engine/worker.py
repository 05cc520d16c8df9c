"""The worker process: owns one model and every MLX call made for it.

Protocol over a ``multiprocessing`` pipe (tuples, pickled):

router → worker
    ``("load", WorkerOptions)`` first, to a spare process started without a model;
    ``("generate", GenerationRequest)``, ``("count", GenerationRequest)``,
    ``("embed", EmbeddingRequest)``, ``("cancel", request_id, delivered_tokens)``, ``("shutdown",)``
worker → router
    ``("ready", LoadInfo)`` or ``("load_failed", kind, message)`` once, after the load;
    ``("warming", widths)`` after ``ready`` when prefill widths are to be prepared in idle time,
    and ``("warmed", widths, seconds)`` once they are (``seconds``: the idle time it took);
    ``("admitted", Admission)`` when a request is tokenized and accepted (before prefill);
    ``("counted", request_id, prompt_tokens)`` for a ``count``: tokenized only, not admitted;
    ``("step", [chunk, ...])`` once per decode step, for all active sequences (sent as soon as the
    step is sampled, before the prefill chunk that runs in the same generator call), each chunk a
    plain tuple of :class:`GenerationChunk`'s fields in order (pickled ~20x faster than the
    dataclass);
    ``("embedded", EmbeddingResult)`` when all inputs of an embedding request are done;
    ``("cancelled", request_id, generated, after_close)`` when a cancelled sequence is dropped:
    the tokens it had generated, and how many of them came after the ``delivered_tokens`` the
    router had passed on when its client went away;
    ``("error", EngineError)`` for a request that failed;
    ``("memory", WorkerMemory)`` after the load, then at most every ``MEMORY_REPORT_SECONDS``
    while generating and once when the last sequence ends;
    ``("log", levelno, message)`` for lines the router should log.

A reader thread drains the pipe into a queue so the router never blocks on a full pipe and
cancellations are seen between decode steps. All MLX work happens on the main thread.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import ModuleType
from typing import Any, cast

from mlx_router.engine.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineError,
    GenerationRequest,
    WorkerMemory,
    WorkerOptions,
)
from mlx_router.errors import redact_paths

__all__ = ["keep_pytorch_out", "worker_main"]

MEMORY_REPORT_SECONDS = 1.0
"""How often a generating worker reports MLX's memory (and once more when it goes idle)."""


def _reader(conn: Connection, inbox: queue.Queue[tuple[Any, ...]]) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            inbox.put(("shutdown",))
            return
        inbox.put(msg)
        if msg[0] == "shutdown":
            return


class _Worker:
    def __init__(self, conn: Connection, options: WorkerOptions) -> None:
        self.conn = conn
        self.options = options
        self.inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.send_lock = threading.Lock()
        self.embeddings: Any = None
        """The model's :class:`~mlx_router.engine.embed.EmbeddingQueue` (none for vision models)."""
        self.memory_reported = 0.0

    def send(self, msg: tuple[Any, ...]) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def log(self, level: int, message: str) -> None:
        self.send(("log", level, message))

    def run(self) -> None:
        threading.Thread(target=_reader, args=(self.conn, self.inbox), daemon=True).start()
        from mlx_router.engine.lm import classify_exception

        try:
            engine, scheduler = self.load()
            if not self.options.embedding_model:
                scheduler.warm_up(self.options.warmup_tokens)
        except Exception as exc:  # noqa: BLE001 (any load failure is reported, never raised past here)
            kind = classify_exception(exc, None).kind
            # The class name is for the log; the message reaches clients, who need no internals.
            self.log(logging.ERROR, f"load failed: {exc.__class__.__name__}: {describe_exception(exc)}")
            self.send(("load_failed", kind, describe_exception(exc)))
            return
        if hasattr(scheduler, "emit"):  # text models: a step's tokens leave before its prefill runs
            scheduler.emit = self.send_chunks
        self.send(("ready", engine.load_info))
        self.report_memory()
        if getattr(scheduler, "warming", 0):
            self.send(("warming", scheduler.warming))
        self.loop(scheduler)

    def load(self) -> tuple[Any, Any]:
        """The engine and its scheduler: mlx-lm for text models, mlx-vlm for vision models,
        mlx-embeddings for dedicated embedding models (which generate nothing). Text and
        embedding models also get their :attr:`embeddings` queue."""
        from mlx_router.engine.batch import BatchScheduler
        from mlx_router.engine.embed import EmbeddingQueue, EncoderEmbedder, LMEmbedder
        from mlx_router.engine.lm import LMEngine

        if self.options.embedding_model:
            encoder = EncoderEmbedder.load(self.options.model_path, context_length=self.options.context_length)
            self.embeddings = EmbeddingQueue(encoder)
            return encoder, _EmbeddingOnly()
        if self.options.vision:
            return self.load_vision()
        engine = LMEngine.load(
            self.options.model_path,
            context_length=self.options.context_length,
            chat_template=self.options.chat_template,
        )
        self.embeddings = EmbeddingQueue(LMEmbedder.for_engine(engine, self.options.model_path))
        return engine, BatchScheduler(engine, self.options.batch)

    def load_vision(self) -> tuple[Any, Any]:
        """A vision model: mlx-vlm loads it; it is scheduled like a text model."""
        from mlx_router.engine.vlm import VisionScheduler, VLMEngine

        if self.options.chat_template not in (None, "auto"):
            self.log(
                logging.WARNING,
                f"chat_template {self.options.chat_template!r} is not used for a vision model: its processor's "
                "own template places the images",
            )
        engine = VLMEngine.load_vision(self.options.model_path, context_length=self.options.context_length)
        return engine, VisionScheduler(engine, self.options.batch)

    def loop(self, scheduler: Any) -> None:
        idle_work = getattr(scheduler, "idle_work", None)
        warming, warm_seconds = getattr(scheduler, "warming", 0), 0.0
        delay = self.options.batch.idle_work_delay
        busy = time.monotonic()  # the last request, step or the load: background work waits `delay` after it
        while True:
            embedding = self.embeddings is not None and self.embeddings.active
            block = not scheduler.active and not embedding
            timeout = None
            if block and idle_work is not None and self.inbox.empty():
                started = time.monotonic()
                if started - busy < delay:
                    timeout = busy + delay - started  # a request may come: wait for it first
                elif idle_work():  # idle: one piece of background work, then look at the inbox again
                    if warming:
                        warm_seconds += time.monotonic() - started
                        if not scheduler.warming:
                            self.send(("warmed", warming, warm_seconds))
                            warming = 0
                    continue
            while True:
                try:
                    msg = self.inbox.get(block=block, timeout=timeout)
                except queue.Empty:
                    break
                block, busy = False, time.monotonic()
                if not self.handle(scheduler, msg):
                    return
            if self.embeddings is not None and self.embeddings.active:  # one forward pass, then a decode step
                for result in self.embeddings.step():
                    self.send(("embedded" if isinstance(result, EmbeddingResult) else "error", result))
                busy = time.monotonic()
            if scheduler.active:
                self.step(scheduler)
                busy = time.monotonic()
                if not scheduler.active or time.monotonic() - self.memory_reported >= MEMORY_REPORT_SECONDS:
                    self.report_memory()

    def report_memory(self) -> None:
        import mlx.core as mx

        self.memory_reported = time.monotonic()
        memory = WorkerMemory(int(mx.get_active_memory()), int(mx.get_peak_memory()), int(mx.get_cache_memory()))
        self.send(("memory", memory))

    def handle(self, scheduler: Any, msg: tuple[Any, ...]) -> bool:
        """Apply one message from the router; False for ``shutdown``."""
        kind = msg[0]
        if kind == "shutdown":
            if hasattr(scheduler, "close"):
                scheduler.close()
            return False
        if kind == "cancel":
            if self.embeddings is not None and self.embeddings.cancel(msg[1]):
                return True
            generated = scheduler.cancel(msg[1])
            if generated is not None:
                self.send(("cancelled", msg[1], generated, max(0, generated - msg[2])))
        elif kind == "embed":
            self.admit_embedding(msg[1])
        elif kind == "generate":
            self.admit(msg[1], lambda request: ("admitted", scheduler.add(request)))
        elif kind == "count":
            self.admit(msg[1], lambda request: ("counted", request.request_id, scheduler.count(request)))
        return True

    def admit(self, request: GenerationRequest, answer: Callable[[GenerationRequest], tuple[Any, ...]]) -> None:
        """Send ``answer(request)``, or the request's error when tokenizing or admitting it fails."""
        from mlx_router.engine.lm import RequestRejected, classify_exception

        try:
            self.send(answer(request))
        except RequestRejected as exc:
            self.send(("error", EngineError(exc.kind, exc.message, request.request_id, exc.param)))
        except Exception as exc:  # noqa: BLE001 (any admission failure is this request's error)
            self.log(logging.ERROR, f"request {request.request_id} failed at admission: {exc.__class__.__name__}: "
                     f"{describe_exception(exc)}")
            self.send(("error", classify_exception(exc, request.request_id)))

    def step(self, scheduler: Any) -> None:
        """One batch step; its chunks go to the router. A failed step fails the whole batch, not
        the process."""
        from mlx_router.engine.lm import classify_exception

        try:
            chunks = scheduler.step()
        except Exception as exc:  # noqa: BLE001 (a failed step fails the whole batch, not the process)
            self.log(logging.ERROR, f"a batch step failed: {exc.__class__.__name__}: {describe_exception(exc)}")
            for request_id in scheduler.fail_all():
                self.send(("error", classify_exception(exc, request_id)))
            return
        if chunks:
            self.send_chunks(chunks)

    def send_chunks(self, chunks: list[Any]) -> None:
        """One ``("step", ...)`` message: the chunks as plain tuples."""
        self.send(("step", [c.fields() for c in chunks]))


    def admit_embedding(self, request: EmbeddingRequest) -> None:
        """Queue an embedding request, or refuse it at once (bad input, or a vision model)."""
        from mlx_router.engine.embed import EmbeddingRejected
        from mlx_router.engine.lm import classify_exception

        if self.embeddings is None:
            self.send(("error", EngineError("invalid_request", "this model cannot compute embeddings", request.request_id, "model")))
            return
        try:
            self.embeddings.add(request)
        except EmbeddingRejected as exc:
            self.send(("error", EngineError("invalid_request", exc.message, request.request_id, exc.param)))
        except Exception as exc:  # noqa: BLE001 (any admission failure is this request's error)
            self.send(("error", classify_exception(exc, request.request_id)))


class _EmbeddingOnly:
    """The scheduler of a dedicated embedding model: it generates nothing."""

    active = False

    def add(self, request: GenerationRequest) -> Any:
        from mlx_router.engine.lm import RequestRejected

        raise RequestRejected("invalid_request", "this is an embedding model: it serves /v1/embeddings only", "model")

    count = add  # it has no chat template to count a prompt with

    def cancel(self, request_id: str) -> None:
        return None


def describe_exception(exc: BaseException) -> str:
    """The first line of an exception, without paths or its class name (clients need no
    internals; the log has the class), for a load failure message; for an import of the PyTorch
    this process hides, what to set instead."""
    if isinstance(exc, ImportError) and exc.name in PYTORCH_MODULES and sys.modules.get(exc.name, 0) is None:
        return (
            f"this model's code imports {exc.name}, which model workers keep out; "
            "set defaults.worker_pytorch to true (with PyTorch installed) and restart"
        )
    detail = redact_paths(str(exc).splitlines()[0][:300]) if str(exc) else ""
    return detail or "the model files could not be loaded"


PYTORCH_MODULES = ("torch", "torchvision", "torchaudio", "torchcodec")


def keep_pytorch_out() -> None:
    """Hide an installed PyTorch from this process before transformers is imported.

    transformers imports PyTorch whenever it is installed, and MLX never uses it: with torch 2.14
    installed, a tiny model's load took 3.6-4.7 s instead of 1.3-1.6 s and the worker held 630 MB
    instead of 106 MB (``docs/perf/probes/served_start.py``). A ``None`` entry in ``sys.modules`` makes
    ``importlib.util.find_spec`` answer "not installed" and an ``import`` fail, so tokenizers and
    image processors take the paths they take on a host without PyTorch."""
    for name in PYTORCH_MODULES:
        sys.modules.setdefault(name, cast(ModuleType, None))


def worker_main(conn: Connection, options: WorkerOptions | None, pytorch: bool = False) -> None:
    """Entry point of the spawned process.

    Without ``options`` the process is a spare: it imports MLX and mlx-lm now, then waits for
    ``("load", WorkerOptions)``, so that a model load later costs little more than reading the
    weights. Without ``pytorch`` an installed PyTorch is hidden (:func:`keep_pytorch_out`)."""
    if not pytorch:
        keep_pytorch_out()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download while serving
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    try:
        if options is None:
            import mlx_router.engine.batch  # noqa: F401  (MLX, mlx-lm, transformers)

            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] != "load":
                return
            options = msg[1]
        _Worker(conn, options).run()
    finally:
        conn.close()
