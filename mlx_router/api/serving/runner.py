"""The shared runner: one job's sequences on a model's worker, merged into one event stream.

Every generating endpoint works the same way; only the wire format differs. An endpoint module
(``chat.py``, ``completions.py``, …) does three things:

1. **Prepare a complete job** before anything runs: validate the wire request, resolve the
   model (``runner.manager.resolve``) and its defaults (``runner.model_defaults(entry)``, the
   model's settings resolved once, as :class:`~mlx_router.protocol.sampling.ModelDefaults`),
   build one :class:`~mlx_router.engine.types.GenerationRequest` per choice (ids from
   :func:`request_ids`; images, tools and constraints already in them), then
   ``runner.job(entry, requests, ...)``, which refuses a job that could never fit the model's
   batch and queue. Nothing is loaded yet, so every refusal so far costs nothing.
2. **Start it**: ``run = await runner.start(job)`` acquires the model (loading it if needed),
   sends every sequence and waits until each is admitted, so failures up to here (unknown
   model, queue full, prompt too long, load failed) raise a :class:`~mlx_router.errors.RouterError`
   that becomes an HTTP error, and ``run.admissions`` says how each choice was taken (prompt
   tokens, cached tokens, reasoning and tool-call formats).
3. **Convert events**: ``async for index, chunk in run.events`` yields each choice's
   :class:`~mlx_router.engine.types.GenerationChunk` as the worker produces it (``chunk`` is
   None when nothing came for ``server.sse_keepalive_seconds``: a stream writes a keep-alive).
   A choice's last chunk has a ``finish_reason``. ``await run.collect(prefixes)`` gathers a
   whole answer instead. Model text is read with an ``answer.AnswerReader`` per choice
   (reasoning apart, then tool calls) and shaped with the pure converters of ``protocol/``.
   ``run.usage()`` counts tokens (each prompt once), ``run.log_done(finishes)`` writes the
   job's log line with the finish reasons as returned, and ``job.headers()`` the response
   headers saying how it ended (``X-MLX-Router-Stopped: timeout``).

A minimal endpoint (see ``completions.py`` for a whole one)::

    async def answer(runner: Runner, req: MyRequest) -> MyResponse:
        entry = runner.manager.resolve(req.model)
        params = req.to_generation_params(runner.model_defaults(entry), max_tokens_limit=...)
        requests = [GenerationRequest(rid, params, prompt=req.text) for rid in request_ids(1)]
        job = runner.job(entry, requests, prompt_of=[0], stream=False, prompt_param="text")
        run = await runner.start(job)
        texts, _ = await run.collect([""])
        run.log_done([finish_reason(run.last[0].finish_reason)])
        return MyResponse(text=texts[0], usage=run.usage())

The runner owns what every endpoint shares: the fan-in of the choices, the time limit (a
non-streaming job is stopped at ``defaults.timeout`` and keeps its text, each unfinished choice
ending with ``length`` and ``job.timed_out`` set; a stream has no wall-clock limit), keep-alive
ticks, cancellation (leaving ``run.events`` early, or the task being cancelled, cancels every
sequence in the worker), engine errors mapped to client errors, metrics, request counters and
the drain state (:class:`DrainState`, read by the middleware and the status report).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace

from mlx_router.config.settings import Settings
from mlx_router.engine.client import EngineFailure
from mlx_router.engine.types import (
    Admission,
    EngineError,
    GenerationChunk,
    GenerationParams,
    GenerationRequest,
    TokenLogprob,
)
from mlx_router.errors import (
    GenerationTimeout,
    InsufficientMemory,
    InternalError,
    InvalidRequest,
    RouterError,
    ServiceUnavailable,
    WorkerCrashed,
    redact_paths,
)
from mlx_router.logs import REQUEST_ID
from mlx_router.manager.manager import MLXModelManager
from mlx_router.manager.registry import ModelEntry
from mlx_router.metrics.registry import RouterMetrics
from mlx_router.protocol.common import Usage, new_id, usage
from mlx_router.protocol.sampling import ModelDefaults

__all__ = [
    "STOPPED_HEADER",
    "DrainState",
    "Event",
    "Job",
    "Run",
    "Runner",
    "choice_params",
    "engine_error",
    "request_ids",
]

logger = logging.getLogger(__name__)

STOPPED_HEADER = "X-MLX-Router-Stopped"
"""Set to ``timeout`` on a non-streaming answer that ``defaults.timeout`` cut short (its
unfinished choices say ``finish_reason: "length"``)."""

Event = tuple[int, GenerationChunk | None]
"""(choice, chunk); the chunk is None when nothing came for ``server.sse_keepalive_seconds``."""
_Item = tuple[int, Admission | GenerationChunk | None]


def engine_error(error: EngineError, prompt_param: str) -> RouterError:
    """Map an engine failure to the client-visible error (library text may name files).
    ``prompt_param`` names where the prompt came from (``messages``, ``prompt``, …)."""
    error = replace(error, message=redact_paths(error.message))
    if error.kind == "invalid_request":
        return InvalidRequest(error.message, param=error.param or prompt_param)
    if error.kind == "context_length":
        return InvalidRequest(error.message, param=prompt_param, code="context_length_exceeded")
    if error.kind == "out_of_memory":
        return InsufficientMemory(f"Out of memory during generation: {error.message}")
    if error.kind == "worker_crashed":
        return WorkerCrashed(f"The model worker stopped: {error.message}. Retry; a fresh worker will start.")
    return InternalError(error.message)


def request_ids(count: int) -> list[str]:
    """Engine request ids for ``count`` sequences: the HTTP request's id (as on its log lines
    and in ``x-request-id``) with the choice index."""
    current = REQUEST_ID.get()
    base = current if current != "-" else new_id("gen")
    return [f"{base}-{i}" for i in range(count)]


def choice_params(params: GenerationParams, choice: int) -> GenerationParams:
    """Choice ``i`` of ``n`` uses ``seed + i``: the choices differ, and a seed repeats them all."""
    if choice == 0 or params.seed is None:
        return params
    return replace(params, seed=params.seed + choice)


@dataclass
class Job:
    """A prepared request: one engine sequence per choice, complete; nothing is loaded yet.
    Made by :meth:`Runner.job`."""

    entry: ModelEntry
    requests: list[GenerationRequest]
    """Index = choice index."""
    prompt_of: list[int]
    """For each choice, which prompt it continues (usage counts each prompt once)."""
    stream: bool
    """Streams have no wall-clock limit; other jobs stop at ``defaults.timeout``."""
    prompt_param: str
    """The request parameter holding the prompt, named by errors about it."""
    timed_out: bool = False
    """Set when ``defaults.timeout`` ended the job: unfinished choices end with ``length``."""

    def headers(self) -> dict[str, str]:
        """Response headers saying how the job ended, when a limit ended it."""
        return {STOPPED_HEADER: "timeout"} if self.timed_out else {}

    @property
    def constrained(self) -> bool:
        """Some sequence follows a grammar (a forced tool call or a JSON answer)."""
        return any(request.params.constraint is not None for request in self.requests)


@dataclass
class Run:
    """A started job: every choice admitted, chunks to come."""

    job: Job
    admissions: list[Admission]
    events: AsyncIterator[Event] = field(init=False)
    """Each choice's chunks as produced (None: a keep-alive tick)."""
    last: dict[int, GenerationChunk] = field(default_factory=dict)
    """Each choice's latest chunk (kept up to date while ``events`` is read)."""
    started: float = field(default_factory=time.perf_counter)

    async def collect(self, prefixes: list[str]) -> tuple[list[str], list[list[TokenLogprob]]]:
        """Every choice's whole text (after its prefix) and logprobs."""
        texts = [[prefix] for prefix in prefixes]
        tokens: list[list[TokenLogprob]] = [[] for _ in prefixes]
        async for index, chunk in self.events:
            if chunk is not None:
                texts[index].append(chunk.text)
                tokens[index].extend(chunk.logprobs)
        return ["".join(parts) for parts in texts], tokens

    def usage(self) -> Usage:
        """Usage from each choice's last chunk; each prompt counts once, however many choices
        continue it."""
        prompts = {self.job.prompt_of[i]: a for i, a in enumerate(self.admissions)}
        return usage(
            sum(a.prompt_tokens for a in prompts.values()),
            sum(chunk.completion_tokens for chunk in self.last.values()),
            sum(a.cached_tokens for a in prompts.values()),
        )

    def log_done(self, finishes: list[str]) -> None:
        """One line per finished job; ``finishes`` are the finish reasons as returned."""
        seconds = time.perf_counter() - self.started
        counts = self.usage()
        generated = counts.completion_tokens
        logger.info(
            "model=%s choices=%d prompt_tokens=%d completion_tokens=%d finish=%s%s %.2fs %.1f tok/s",
            self.job.entry.id,
            len(self.job.requests),
            counts.prompt_tokens,
            generated,
            ",".join(finishes),
            " (defaults.timeout)" if self.job.timed_out else "",
            seconds,
            generated / seconds if seconds > 0 else 0.0,
        )


class DrainState:
    """Whether the server is shutting down, and the event queue of every running job (a drain
    puts an error into each one still running at its deadline)."""

    def __init__(self) -> None:
        self.draining = False
        self.queues: set[asyncio.Queue[tuple[int, object]]] = set()


class Runner:
    """Runs prepared jobs against the manager's models (see the module docstring)."""

    def __init__(self, manager: MLXModelManager, settings: Settings, metrics: RouterMetrics | None = None) -> None:
        self.manager = manager
        self.settings = settings
        self.metrics = metrics or RouterMetrics(manager, settings)
        self.drain_state = DrainState()
        self.requests_total = 0
        self.requests_failed = 0

    # ------------------------------------------------------------------ preparing

    def model_defaults(self, entry: ModelEntry) -> ModelDefaults:
        """What a request that names no sampling value gets: the model's settings, resolved
        once by the manager, and the cap of the current memory pressure."""
        view = self.manager.model_settings(entry)
        return ModelDefaults(
            max_tokens=view.max_tokens,
            temperature=view.temperature,
            top_p=view.top_p,
            top_k=view.top_k,
            min_p=view.min_p,
            max_tokens_cap=self.manager.max_tokens_cap(entry),
        )

    def job(
        self,
        entry: ModelEntry,
        requests: list[GenerationRequest],
        *,
        prompt_of: list[int],
        stream: bool,
        prompt_param: str,
        param: str = "n",
        asked: str = "",
    ) -> Job:
        """A job, refused with a 400 when the model could never hold its sequences at once
        (``asked`` says what made so many, ``param`` which parameter to lower)."""
        limit = self.manager.queue_limit(entry)
        if len(requests) > limit:
            raise InvalidRequest(
                f"This request needs {len(requests)} sequences{f' ({asked})' if asked else ''}, more than model "
                f"{entry.id!r} can ever hold at once: {limit} (max_batch_size + max_queue). Ask for fewer choices "
                "or prompts.",
                param=param,
                code="too_many_sequences",
            )
        return Job(entry, requests, prompt_of, stream, prompt_param)

    # ------------------------------------------------------------------ running

    async def start(self, job: Job) -> Run:
        """Load the model if needed and get every choice admitted, so errors so far are HTTP errors."""
        items = self._items(job)
        admissions: dict[int, Admission] = {}
        early: list[Event] = []
        while len(admissions) < len(job.requests):
            index, item = await items.__anext__()
            if isinstance(item, Admission):
                admissions[index] = item
            elif item is not None:
                early.append((index, item))
        run = Run(job, [admissions[i] for i in range(len(job.requests))])
        run.events = _chunks(run, early, items)
        return run

    async def count(self, job: Job) -> int:
        """The prompt tokens of the job's first request as its model's worker would admit it
        (chat template, tools and images included), loading the model if needed; nothing is
        prefilled or generated, and a prompt longer than the context is still counted."""
        try:
            async with self.manager.acquire(job.entry.id, 1) as lm:
                return await lm.client.count(job.requests[0])
        except EngineFailure as exc:
            raise engine_error(exc.error, job.prompt_param) from None

    async def _items(self, job: Job) -> AsyncGenerator[_Item, None]:
        """(choice, Admission | chunk | None) for every choice; counts the request."""
        deadline = None if job.stream else time.monotonic() + self.settings.defaults.timeout
        self.requests_total += 1
        try:
            async for item in self._generate(job, deadline):
                yield item
        except RouterError:
            self.requests_failed += 1
            raise

    async def _generate(self, job: Job, deadline: float | None) -> AsyncGenerator[_Item, None]:
        """Merge the choices' events. At the deadline, a job whose choices were all admitted
        ends each unfinished choice with ``length`` (what was generated is kept and
        ``job.timed_out`` says why); one still waiting for an admission is a 504."""
        observe = self.metrics.generation(job.entry.id)  # token counts and latencies, per yielded item
        keepalive = self.settings.server.sse_keepalive_seconds
        async with self.manager.acquire(job.entry.id, len(job.requests)) as lm:
            queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

            async def pump(index: int, request: GenerationRequest) -> None:
                try:
                    async for item in lm.client.generate(request):
                        queue.put_nowait((index, item))
                    queue.put_nowait((index, None))
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                    queue.put_nowait((index, exc))

            tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(job.requests)]
            running = len(tasks)
            admitted: dict[int, Admission] = {}
            last: dict[int, GenerationChunk] = {}
            self.drain_state.queues.add(queue)
            try:
                while running:
                    try:
                        index, item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        # asyncio.timeout, unlike wait_for, creates no task per wait (hot path).
                        wait = keepalive if deadline is None else min(deadline - time.monotonic(), keepalive)
                        try:
                            async with asyncio.timeout(wait):
                                index, item = await queue.get()
                        except TimeoutError:
                            if deadline is None or time.monotonic() < deadline:
                                yield -1, None  # still working: streams send a keep-alive
                                continue
                            if len(admitted) < len(job.requests):
                                raise
                            job.timed_out = True
                            for index, chunk in _cut_short(job, admitted, last):
                                yield index, chunk
                            return
                    if item is None:
                        running -= 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        assert isinstance(item, (Admission, GenerationChunk))
                        if isinstance(item, Admission):
                            admitted[index] = item
                        else:
                            last[index] = item
                        observe(index, item)
                        yield index, item
            except TimeoutError:
                raise GenerationTimeout(
                    f"No output within {self.settings.defaults.timeout:g} s (defaults.timeout): the request "
                    "was still waiting to start."
                ) from None
            except EngineFailure as exc:
                raise engine_error(exc.error, job.prompt_param) from None
            finally:
                self.drain_state.queues.discard(queue)
                for task in tasks:
                    task.cancel()  # leaving early cancels the sequences in the worker
                await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ draining

    @property
    def draining(self) -> bool:
        return self.drain_state.draining

    @property
    def running(self) -> int:
        """Jobs generating now."""
        return len(self.drain_state.queues)

    async def drain(self, deadline: float) -> None:
        """Refuse new work, let running jobs finish until ``deadline`` seconds, then end the
        rest with an error (streams get an error event and their end marker)."""
        state = self.drain_state
        state.draining = True
        self.manager.begin_shutdown()
        limit = time.monotonic() + deadline
        while state.queues and time.monotonic() < limit:
            await asyncio.sleep(0.05)
        if state.queues:
            logger.warning("Drain deadline reached; ending %d running request(s)", len(state.queues))
        stop = ServiceUnavailable("The server is shutting down; the request was stopped.", code="shutting_down")
        for queue in list(state.queues):
            queue.put_nowait((-1, stop))
        while state.queues and time.monotonic() < limit + 5:
            await asyncio.sleep(0.01)


def _cut_short(
    job: Job, admitted: dict[int, Admission], last: dict[int, GenerationChunk]
) -> list[tuple[int, GenerationChunk]]:
    """A closing ``length`` chunk for every choice that has not finished."""
    return [
        (
            index,
            GenerationChunk(
                request_id=request.request_id,
                text="",
                completion_tokens=last[index].completion_tokens if index in last else 0,
                prompt_tokens=admitted[index].prompt_tokens,
                finish_reason="length",
            ),
        )
        for index, request in enumerate(job.requests)
        if index not in last or last[index].finish_reason is None
    ]


async def _chunks(run: Run, early: list[Event], items: AsyncGenerator[_Item, None]) -> AsyncIterator[Event]:
    """The chunks after the admissions (those that came before the last admission first),
    keeping ``run.last`` current; closing this closes the job."""
    try:
        for index, chunk in early:
            if chunk is not None:
                run.last[index] = chunk
            yield index, chunk
        async for index, item in items:
            assert not isinstance(item, Admission)
            if item is not None:
                run.last[index] = item
            yield index, item
    finally:
        await items.aclose()
