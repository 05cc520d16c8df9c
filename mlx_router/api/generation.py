"""Generation as a service: wire request in, wire response or chunk stream out.

The only place where protocol objects become engine requests and engine chunks become
protocol objects. Routes stay thin; the manager and engine never see the wire format.

A request becomes a :class:`Job` with one engine sequence per choice (``n`` choices per prompt,
several prompts for text completions). The sequences run side by side in the model's worker;
their chunks are merged here, tagged with the choice index.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from mlx_router import __version__
from mlx_router.api.vision import refuse_images
from mlx_router.config.settings import Settings
from mlx_router.engine.client import EngineFailure
from mlx_router.engine.types import (
    Admission,
    Constraint,
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
from mlx_router.protocol.chat import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ResponseMessage,
    TokenLogprobOut,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from mlx_router.protocol.common import Usage, new_id, now, usage
from mlx_router.protocol.completions import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from mlx_router.protocol.sampling import ModelDefaults, SamplingRequest
from mlx_router.text.constraints import json_grammar, schema_depth, validate_grammar
from mlx_router.text.reasoning import HarmonySplitter, ReasoningSplitter, make_splitter
from mlx_router.text.tools import ParsedCall, ToolCallStream, make_format

__all__ = ["GenerationService", "Job", "STOPPED_HEADER", "SYSTEM_FINGERPRINT", "engine_error"]

logger = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = f"fp_mlx_router_{__version__}"
STOPPED_HEADER = "X-MLX-Router-Stopped"
"""Set to ``timeout`` on a non-streaming answer that ``defaults.timeout`` cut short (its
unfinished choices say ``finish_reason: "length"``)."""
T = TypeVar("T")

Event = tuple[int, Admission | GenerationChunk | None]
"""(choice, item); ``(KEEPALIVE, None)`` when nothing came for ``server.sse_keepalive_seconds``."""
KEEPALIVE = -1
Splitter = ReasoningSplitter | HarmonySplitter


def engine_error(error: EngineError, prompt_param: str = "messages") -> RouterError:
    """Map an engine failure to the client-visible error (library text may name files).
    ``prompt_param`` names where the prompt came from: ``messages`` (chat) or ``prompt``."""
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


@dataclass
class Job:
    """A validated request: one engine sequence per choice; nothing is loaded yet."""

    kind: Literal["chat", "completion"]
    entry: ModelEntry
    requests: list[GenerationRequest]
    """Index = choice index."""
    prompt_of: list[int]
    """For each choice, which prompt it continues (usage counts each prompt once)."""
    stream: bool
    include_usage: bool
    stream_format: Literal["sse", "json_lines", "json_array"]
    keepalive: float
    """Seconds without output after which an SSE stream gets a keep-alive comment."""
    echo: list[str] = field(default_factory=list)
    """Completions with ``echo``: the prompt text each choice starts with."""
    tools: list[dict[str, Any]] = field(default_factory=list)
    """The tools offered (OpenAI shape); their calls are read from the output."""
    parallel_tool_calls: bool = True
    """False keeps only the first call of an answer."""
    timed_out: bool = False
    """Set when ``defaults.timeout`` ended the job: unfinished choices end with ``length``."""

    def headers(self) -> dict[str, str]:
        """Response headers saying how the job ended, when a limit ended it."""
        return {STOPPED_HEADER: "timeout"} if self.timed_out else {}

    def splitter(self, admission: Admission) -> Splitter | None:
        """A reasoning splitter (chat only) when the model's ``reasoning_response`` asks for one;
        always for harmony output, whose channel markup must never reach a client. Under a
        grammar the model writes the answer at once, even where the prompt opened a think block."""
        if self.kind != "chat":
            return None
        if self.entry.config.reasoning_response is None and admission.reasoning_format != "harmony":
            return None
        constrained = any(request.params.constraint is not None for request in self.requests)
        return make_splitter(
            admission.reasoning_format,
            inside=admission.reasoning_open and not constrained,
            tool_frames=admission.tool_format == "harmony",
        )

    def tool_stream(self, admission: Admission) -> ToolCallStream | None:
        """A reader of tool calls when tools were offered (the worker says in which format)."""
        if self.kind != "chat" or not self.tools or admission.tool_format is None:
            return None
        return ToolCallStream(make_format(admission.tool_format, self.tools))

    def reasoning_out(self, reasoning: str) -> str | None:
        """Reasoning text as returned: separated when enabled, dropped when disabled."""
        return reasoning if reasoning and self.entry.config.reasoning_response == "enable" else None


@dataclass
class _Run:
    """A started job: every choice admitted, chunks to come."""

    admissions: list[Admission]
    events: AsyncIterator[Event]
    started: float = field(default_factory=time.perf_counter)

    def usage(self, job: Job, last: dict[int, GenerationChunk]) -> Usage:
        """Usage from each choice's last chunk; each prompt counts once, however many choices
        continue it."""
        prompts = {job.prompt_of[i]: a for i, a in enumerate(self.admissions)}
        return usage(
            sum(a.prompt_tokens for a in prompts.values()),
            sum(chunk.completion_tokens for chunk in last.values()),
            sum(a.cached_tokens for a in prompts.values()),
        )


class GenerationService:
    """Runs chat and text completions against the manager's models."""

    def __init__(self, manager: MLXModelManager, settings: Settings, metrics: RouterMetrics | None = None) -> None:
        self.manager = manager
        self.settings = settings
        self.metrics = metrics or RouterMetrics(manager, settings)
        self.requests_total = 0
        self.requests_failed = 0
        self.draining = False
        self._queues: set[asyncio.Queue[Any]] = set()
        """The event queue of every running job (shutdown puts an error into each)."""

    # ------------------------------------------------------------------ preparing

    def _common(self, req: SamplingRequest) -> tuple[ModelEntry, ModelDefaults, int]:
        entry = self.manager.resolve(req.model)
        n = req.n or 1
        if n > self.settings.defaults.max_n:
            raise InvalidRequest(f"n must be at most {self.settings.defaults.max_n} (defaults.max_n).", param="n")
        if req.stream_options is not None and not self._stream(req):
            raise InvalidRequest("stream_options is only allowed when stream is true.", param="stream_options")
        cap = self.manager.max_tokens_cap(entry)
        config = entry.config
        defaults = ModelDefaults(
            max_tokens=config.max_tokens or self.settings.defaults.max_tokens,
            temperature=config.temp if config.temp is not None else 0.7,
            top_p=config.top_p if config.top_p is not None else 1.0,
            top_k=config.top_k or 0,
            min_p=config.min_p or 0.0,
            max_tokens_cap=cap,
        )
        return entry, defaults, n

    def _stream(self, req: SamplingRequest) -> bool:
        return self.settings.defaults.stream if req.stream is None else req.stream

    def _job(self, kind: Literal["chat", "completion"], req: SamplingRequest, entry: ModelEntry,
             requests: list[GenerationRequest], prompt_of: list[int], echo: list[str] | None = None) -> Job:
        limit = self.manager.queue_limit(entry)
        if len(requests) > limit:
            prompts = len(set(prompt_of))
            asked = f"{prompts} prompts × n {req.n or 1}" if prompts > 1 else f"n {req.n or 1}"
            raise InvalidRequest(
                f"This request needs {len(requests)} sequences ({asked}), more than model {entry.id!r} can ever "
                f"hold at once: {limit} (max_batch_size + max_queue). Ask for fewer choices or prompts.",
                param="n",
                code="too_many_sequences",
            )
        return Job(
            kind=kind,
            entry=entry,
            requests=requests,
            prompt_of=prompt_of,
            stream=self._stream(req),
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            stream_format=req.streaming_format or self.settings.defaults.streaming_format,
            keepalive=self.settings.server.sse_keepalive_seconds,
            echo=echo or [],
        )

    def prepare_chat(self, req: ChatCompletionRequest) -> Job:
        """Validate a chat request against server and model settings."""
        req.unsupported_features()
        entry, defaults, n = self._common(req)
        tools, constraint = self._tools_and_constraint(req, entry)
        refuse_images(req, entry, self.manager.entries)  # the images themselves: attach_images
        params = req.to_generation_params(defaults, max_tokens_limit=self.settings.defaults.max_tokens_limit)
        params = replace(params, constraint=constraint)
        messages = tuple(m.to_template() for m in req.messages)
        base = _request_id()
        kwargs = req.template_kwargs()
        requests = [
            GenerationRequest(
                f"{base}-{i}",
                _choice_params(params, i),
                messages=messages,
                chat_template_kwargs=kwargs,
                tools=tuple(tools) or None,
                tool_format=entry.config.tool_parser,
            )
            for i in range(n)
        ]
        job = self._job("chat", req, entry, requests, [0] * n)
        job.tools, job.parallel_tool_calls = tools, req.parallel_tool_calls is not False
        return job

    def _tools_and_constraint(self, req: ChatCompletionRequest, entry: ModelEntry) -> tuple[list[dict[str, Any]], Constraint | None]:
        """The tools offered to the model and the grammar its output must follow, if any.
        Refuses tools where they are turned off and schemas the grammar engine cannot honour."""
        defaults = self.settings.defaults
        if req.tools:
            reason = None
            if not defaults.enable_function_calling:
                reason = "function calling is disabled on this server (defaults.enable_function_calling)"
            elif not entry.supports_tools:
                reason = f"model {entry.id!r} does not support tools (supports_tools, or its chat template)"
            elif len(req.tools) > defaults.max_tools:
                reason = f"at most {defaults.max_tools} tools are allowed (defaults.max_tools)"
            if reason is not None:
                raise InvalidRequest(f"Tools cannot be used here: {reason}.", param="tools")
        answer = req.response_format.answer_schema() if req.response_format is not None else None
        offered = req.offered_tools()
        forced = req.forced_tools()
        constrained = forced if forced is not None else (offered if answer is not None else [])
        enforced = {id(tool) for tool in constrained}  # the request's own objects: no deep comparisons
        for i, tool in enumerate(req.tools or ()):
            self._check_schema(tool.function.parameters, f"tools[{i}].function.parameters", enforce=id(tool) in enforced)
        if answer is not None:
            self._check_schema(answer, "response_format", enforce=True)
        parallel = req.parallel_tool_calls is not False
        functions = tuple(
            json.dumps({"name": t.function.name, "parameters": t.function.parameters or {"type": "object"}})
            for t in constrained
        )
        constraint = None
        if forced is not None:  # a named function is called once; "required" allows several calls
            constraint = Constraint("tools", tools=functions, parallel=parallel and req.tool_choice == "required")
        elif answer is not None and offered:  # a call, or an answer in the requested format
            constraint = Constraint("tools", schema=json.dumps(answer), tools=functions, parallel=parallel)
        elif answer is not None:
            constraint = Constraint("json", schema=json.dumps(answer))
        return [t.to_template() for t in offered], constraint

    def _check_schema(self, schema: dict[str, Any] | None, param: str, *, enforce: bool) -> None:
        """A schema must be small and shallow and, when it will be enforced, within what the
        grammar engine supports (its complaint names the unsupported keys)."""
        if schema is None:
            return
        defaults = self.settings.defaults
        if len(json.dumps(schema)) > defaults.max_schema_bytes:
            raise InvalidRequest(
                f"The schema is larger than {defaults.max_schema_bytes} bytes (defaults.max_schema_bytes).", param=param
            )
        if schema_depth(schema) > defaults.max_schema_depth:
            raise InvalidRequest(
                f"The schema nests deeper than {defaults.max_schema_depth} levels (defaults.max_schema_depth).", param=param
            )
        error = validate_grammar(json_grammar(schema)) if enforce else None
        if error is not None:
            raise InvalidRequest(f"The schema cannot be enforced: {error}", param=param)

    def prepare_completion(self, req: CompletionRequest) -> Job:
        """Validate a text completion request against server and model settings."""
        req.unsupported_features()
        entry, defaults, n = self._common(req)
        params = req.to_generation_params(defaults, max_tokens_limit=self.settings.defaults.max_tokens_limit)
        base = _request_id()
        requests: list[GenerationRequest] = []
        prompt_of: list[int] = []
        echo: list[str] = []
        for p, prompt in enumerate(req.prompts()):
            for i in range(n):
                index = len(requests)
                text = prompt if isinstance(prompt, str) else None
                ids = tuple(prompt) if not isinstance(prompt, str) else None
                requests.append(GenerationRequest(f"{base}-{index}", _choice_params(params, i), prompt=text, prompt_ids=ids))
                prompt_of.append(p)
                echo.append((text or "") if req.echo else "")
        if req.echo and any(not isinstance(p, str) for p in req.prompts()):
            raise InvalidRequest("echo is supported for text prompts only.", param="echo")
        return self._job("completion", req, entry, requests, prompt_of, echo)

    # ------------------------------------------------------------------ running

    async def _events(self, job: Job) -> AsyncIterator[Event]:
        """(choice, Admission | chunk) for every choice. A non-streaming job runs under
        ``defaults.timeout``; a stream has no wall-clock limit (its client ends it by leaving)."""
        deadline = None if job.stream else time.monotonic() + self.settings.defaults.timeout
        self.requests_total += 1
        try:
            async for event in self._generate(job, deadline):
                yield event
        except RouterError:
            self.requests_failed += 1
            raise

    async def _generate(self, job: Job, deadline: float | None) -> AsyncIterator[Event]:
        """Merge the choices' events. At the deadline, a job whose choices were all admitted
        ends each unfinished choice with ``length`` (what was generated is kept and
        ``job.timed_out`` says why); one still waiting for an admission is a 504."""
        observe = self.metrics.generation(job.entry.id)  # token counts and latencies, per yielded item
        async with self.manager.acquire(job.entry.id, len(job.requests)) as lm:
            queue: asyncio.Queue[tuple[int, Admission | GenerationChunk | BaseException | None]] = asyncio.Queue()

            async def pump(index: int, request: GenerationRequest) -> None:
                try:
                    async for item in lm.client.generate(request):
                        queue.put_nowait((index, item))
                    queue.put_nowait((index, None))
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # handed to the consumer, which raises it
                    queue.put_nowait((index, exc))

            tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(job.requests)]
            running = len(tasks)
            admitted: dict[int, Admission] = {}
            last: dict[int, GenerationChunk] = {}
            self._queues.add(queue)
            try:
                while running:
                    try:
                        index, item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        # asyncio.timeout, unlike wait_for, creates no task per wait (hot path).
                        wait = job.keepalive if deadline is None else min(deadline - time.monotonic(), job.keepalive)
                        try:
                            async with asyncio.timeout(wait):
                                index, item = await queue.get()
                        except TimeoutError:
                            if deadline is None or time.monotonic() < deadline:
                                yield KEEPALIVE, None  # still working: streams send a keep-alive
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
                        if isinstance(item, Admission):
                            admitted[index] = item
                        else:
                            last[index] = item
                        observe(index, item)
                        yield index, item
            except asyncio.TimeoutError:
                raise GenerationTimeout(
                    f"No output within {self.settings.defaults.timeout:g} s (defaults.timeout): the request "
                    "was still waiting to start."
                ) from None
            except EngineFailure as exc:
                raise engine_error(exc.error, "messages" if job.kind == "chat" else "prompt") from None
            finally:
                self._queues.discard(queue)
                for task in tasks:
                    task.cancel()  # leaving early cancels the sequences in the worker
                await asyncio.gather(*tasks, return_exceptions=True)

    async def start(self, job: Job) -> _Run:
        """Load the model if needed and get every choice admitted, so errors so far are HTTP errors."""
        events = self._events(job)
        admissions: dict[int, Admission] = {}
        early: list[Event] = []
        while len(admissions) < len(job.requests):
            index, item = await events.__anext__()
            if isinstance(item, Admission):
                admissions[index] = item
            elif item is not None:
                early.append((index, item))
        return _Run([admissions[i] for i in range(len(job.requests))], _replay(early, events))

    @property
    def running(self) -> int:
        """Jobs generating now."""
        return len(self._queues)

    async def drain(self, deadline: float) -> None:
        """Refuse new work, let running jobs finish until ``deadline`` seconds, then end the
        rest with an error (streams get an error event and their end marker)."""
        self.draining = True
        limit = time.monotonic() + deadline
        while self._queues and time.monotonic() < limit:
            await asyncio.sleep(0.05)
        if self._queues:
            logger.warning("Drain deadline reached; ending %d running request(s)", len(self._queues))
        stop = ServiceUnavailable("The server is shutting down; the request was stopped.", code="shutting_down")
        for queue in list(self._queues):
            queue.put_nowait((-1, stop))
        while self._queues and time.monotonic() < limit + 5:
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ chat

    async def chat_response(self, job: Job) -> ChatCompletionResponse:
        run = await self.start(job)
        texts, tokens, last = await _collect(run, [""] * len(job.requests))
        choices = []
        for index, admission in enumerate(run.admissions):
            content, reasoning = texts[index], ""
            splitter = job.splitter(admission)
            if splitter is not None:
                reasoning, content = _feed(splitter, content, final=True)
            calls: list[ParsedCall] = []
            reader = job.tool_stream(admission)
            if reader is not None:
                content, calls = _read_calls(reader, content, final=True)
                calls = calls[:1] if not job.parallel_tool_calls else calls
            message = ResponseMessage(
                content=(content or None) if calls else content,
                tool_calls=[_tool_call(call) for call in calls] or None,
                reasoning_content=job.reasoning_out(reasoning),
            )
            choices.append(
                Choice(
                    index=index,
                    message=message,
                    logprobs=_chat_logprobs(tokens[index]) if job.requests[index].params.logprobs else None,
                    finish_reason=_finish(last[index].finish_reason, bool(calls)),  # type: ignore[arg-type]
                )
            )
        self._log_done(job, run, last, [choice.finish_reason for choice in choices])
        return _envelope(ChatCompletionResponse, "chatcmpl", job)(choices, run.usage(job, last))

    async def chat_stream(self, job: Job) -> AsyncIterator[ChatCompletionChunk | None]:
        """Start generation (errors raise here), then return the chunk stream."""
        run = await self.start(job)
        return self._chat_chunks(job, run)

    async def _chat_chunks(self, job: Job, run: _Run) -> AsyncIterator[ChatCompletionChunk | None]:
        chunk = _envelope(ChatCompletionChunk, "chatcmpl", job)

        for index in range(len(job.requests)):
            yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        splitters = [job.splitter(a) for a in run.admissions]
        readers = [job.tool_stream(a) for a in run.admissions]
        called = [0] * len(run.admissions)
        last: dict[int, GenerationChunk] = {}
        finishes: dict[int, str] = {}
        async for index, item in run.events:
            if item is None:
                yield None  # keep-alive
                continue
            assert isinstance(item, GenerationChunk)
            last[index] = item
            final = item.finish_reason is not None
            reasoning, content = "", item.text
            splitter = splitters[index]
            if splitter is not None:
                reasoning, content = _feed(splitter, item.text, final=final)
            calls: list[ParsedCall] = []
            reader = readers[index]
            if reader is not None:
                content, calls = _read_calls(reader, content, final=final)
            shown_reasoning = job.reasoning_out(reasoning)
            logprobs = _chat_logprobs(list(item.logprobs)) if item.logprobs else None
            if content or shown_reasoning or logprobs:
                delta = Delta(content=content or None, reasoning_content=shown_reasoning)
                yield chunk([ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
            for call in calls:
                if called[index] and not job.parallel_tool_calls:
                    break
                for delta in _tool_call_deltas(call, called[index]):
                    yield chunk([ChunkChoice(index=index, delta=delta)])
                called[index] += 1
            if final:
                finish = finishes[index] = _finish(item.finish_reason, bool(called[index]))
                yield chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=finish)])  # type: ignore[arg-type]
        self._log_done(job, run, last, [finishes[i] for i in sorted(finishes)])
        if job.include_usage:
            yield chunk([], run.usage(job, last))

    # ------------------------------------------------------------------ text completions

    async def completion_response(self, job: Job) -> CompletionResponse:
        run = await self.start(job)
        texts, tokens, last = await _collect(run, job.echo or [""] * len(job.requests))
        choices = [
            CompletionChoice(
                text=texts[index],
                index=index,
                logprobs=_legacy_logprobs(tokens[index], 0) if job.requests[index].params.logprobs else None,
                finish_reason=_finish(last[index].finish_reason),  # type: ignore[arg-type]
            )
            for index in range(len(job.requests))
        ]
        self._log_done(job, run, last, [choice.finish_reason or "" for choice in choices])
        return _envelope(CompletionResponse, "cmpl", job)(choices, run.usage(job, last))

    async def completion_stream(self, job: Job) -> AsyncIterator[CompletionResponse | None]:
        run = await self.start(job)
        return self._completion_chunks(job, run)

    async def _completion_chunks(self, job: Job, run: _Run) -> AsyncIterator[CompletionResponse | None]:
        chunk = _envelope(CompletionResponse, "cmpl", job)

        offsets = [len(echo) for echo in job.echo] or [0] * len(job.requests)
        for index, echo in enumerate(job.echo):
            if echo:
                yield chunk([CompletionChoice(text=echo, index=index, finish_reason=None)])
        last: dict[int, GenerationChunk] = {}
        async for index, item in run.events:
            if item is None:
                yield None  # keep-alive
                continue
            assert isinstance(item, GenerationChunk)
            last[index] = item
            logprobs = _legacy_logprobs(list(item.logprobs), offsets[index]) if item.logprobs else None
            offsets[index] += sum(_text_length(t) for t in item.logprobs)
            finish = _finish(item.finish_reason) if item.finish_reason is not None else None
            if item.text or logprobs or finish:
                yield chunk([CompletionChoice(text=item.text, index=index, logprobs=logprobs, finish_reason=finish)])  # type: ignore[arg-type]
        self._log_done(job, run, last, [_finish(last[i].finish_reason) for i in sorted(last)])
        if job.include_usage:
            yield chunk([], run.usage(job, last))

    # ------------------------------------------------------------------ logging

    def _log_done(self, job: Job, run: _Run, last: dict[int, GenerationChunk], finishes: list[str]) -> None:
        """One line per finished job; ``finishes`` are the finish reasons as returned."""
        seconds = time.perf_counter() - run.started
        counts = run.usage(job, last)
        generated = counts.completion_tokens
        logger.info(
            "model=%s choices=%d prompt_tokens=%d completion_tokens=%d finish=%s%s %.2fs %.1f tok/s",
            job.entry.id,
            len(job.requests),
            counts.prompt_tokens,
            generated,
            ",".join(finishes),
            " (defaults.timeout)" if job.timed_out else "",
            seconds,
            generated / seconds if seconds > 0 else 0.0,
        )


# ---------------------------------------------------------------------- helpers


def _envelope(cls: type[T], prefix: str, job: Job) -> Callable[..., T]:
    """A maker of response objects (or the chunks of one stream, which share id and time)."""
    response_id, created = new_id(prefix), now()

    def make(choices: list[Any], usage: Usage | None = None) -> T:
        return cls(  # type: ignore[call-arg]
            id=response_id,
            created=created,
            model=job.entry.id,
            choices=choices,
            usage=usage,
            system_fingerprint=SYSTEM_FINGERPRINT,
        )

    return make


def _request_id() -> str:
    current = REQUEST_ID.get()
    return current if current != "-" else new_id("gen")


def _choice_params(params: GenerationParams, choice: int) -> GenerationParams:
    """Choice ``i`` of ``n`` uses ``seed + i``: the choices differ, and a seed repeats them all."""
    if choice == 0 or params.seed is None:
        return params
    return replace(params, seed=params.seed + choice)


async def _collect(
    run: _Run, prefixes: list[str]
) -> tuple[list[str], list[list[TokenLogprob]], dict[int, GenerationChunk]]:
    """Every choice's whole text (after its prefix), logprobs and last chunk."""
    texts = [[prefix] for prefix in prefixes]
    tokens: list[list[TokenLogprob]] = [[] for _ in prefixes]
    last: dict[int, GenerationChunk] = {}
    async for index, chunk in run.events:
        if chunk is None:
            continue
        assert isinstance(chunk, GenerationChunk)
        texts[index].append(chunk.text)
        tokens[index].extend(chunk.logprobs)
        last[index] = chunk
    return ["".join(parts) for parts in texts], tokens, last


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


async def _replay(early: list[Event], events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    try:
        for event in early:
            yield event
        async for event in events:
            yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _feed(reader: Splitter | ToolCallStream, text: str, *, final: bool) -> tuple[Any, Any]:
    """What a streaming reader makes of a piece of answer text: (reasoning, content) from a
    splitter, (content, calls) from a tool-call reader; the last piece also flushes what the
    reader held back."""
    first, second = reader.feed(text)
    if final:
        more_first, more_second = reader.flush()
        first, second = first + more_first, second + more_second
    return first, second


def _read_calls(reader: ToolCallStream, text: str, *, final: bool) -> tuple[str, list[ParsedCall]]:
    """(content, calls) of a piece of answer text. At the end, a call that a length limit cut
    off after complete calls is dropped: its markup is no answer, and the calls stand."""
    content, calls = reader.feed(text)
    if final:
        cut = reader.in_call and bool(reader.calls)
        more_content, more_calls = reader.flush()
        content, calls = content + ("" if cut and not more_calls else more_content), calls + more_calls
    return content, calls


def _chat_logprobs(tokens: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token_bytes),
                top_logprobs=[TopLogprob(token=s, logprob=lp, bytes=list(b)) for s, b, lp in t.top],
            )
            for t in tokens
        ],
        refusal=None,
    )


def _legacy_logprobs(tokens: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += _text_length(t)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{s: lp for s, _b, lp in t.top} for t in tokens],
        text_offset=offsets,
    )


def _text_length(token: TokenLogprob) -> int:
    """Characters a token adds to the text (its name may be spelled ``bytes:…``)."""
    return len(token.token_bytes.decode("utf-8", errors="replace"))


def _finish(reason: str | None, called: bool = False) -> str:
    """The wire finish reason; an answer that ended normally after calling tools says so."""
    if reason in ("cancelled", None, "stop"):
        return "tool_calls" if called else "stop"
    return reason


def _tool_call(call: ParsedCall) -> ToolCall:
    return ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


def _tool_call_deltas(call: ParsedCall, index: int) -> list[Delta]:
    """A call as OpenAI streams one: id and name first, then the arguments."""
    return [
        Delta(tool_calls=[ToolCallDelta(index=index, id=call.id, type="function", function=FunctionCallDelta(name=call.name, arguments=""))]),
        Delta(tool_calls=[ToolCallDelta(index=index, function=FunctionCallDelta(arguments=call.arguments))]),
    ]
