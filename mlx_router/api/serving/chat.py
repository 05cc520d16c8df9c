"""``POST /v1/chat/completions``: a chat request prepared into a complete job (tools, grammar,
images), run by the shared runner, and its events turned into a response or chunks; each
choice's text is read by an :class:`~mlx_router.api.serving.answer.AnswerReader`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mlx_router.api.serving.answer import AnswerReader
from mlx_router.api.serving.runner import Job, Run, Runner, choice_params, request_ids
from mlx_router.api.serving.sampling import Sampling, prepare_sampling
from mlx_router.api.sse import StreamFormat
from mlx_router.api.vision import load_request_images, refuse_images
from mlx_router.engine.types import Admission, Constraint, GenerationRequest
from mlx_router.errors import InvalidRequest
from mlx_router.manager.model_settings import ResolvedModelSettings
from mlx_router.protocol.chat import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    ResponseMessage,
    ToolCallDelta,
    chat_logprobs,
    tool_call,
    tool_call_deltas,
)
from mlx_router.protocol.common import envelope, finish_reason
from mlx_router.text.constraints import json_grammar, schema_depth, validate_grammar
from mlx_router.text.tools import CallDelta

__all__ = ["ChatJob", "chat_chunks", "chat_response", "chat_stream", "prepare_chat"]


@dataclass
class ChatJob:
    """A chat request ready to run: its runner job and how to read and shape its output."""

    job: Job
    model: ResolvedModelSettings
    include_usage: bool
    stream_format: StreamFormat
    tools: list[dict[str, Any]] = field(default_factory=list)
    """The tools offered (OpenAI shape); their calls are read from the output."""
    parallel_tool_calls: bool = True
    """False keeps only the first call of an answer."""
    warnings: tuple[str, ...] = ()
    """What the image loaders had to leave out, and tools dropped (``X-MLX-Router-Warnings``)."""
    reasoning_response: Literal["enable", "disable"] | None = None
    """Whether separated reasoning is returned (``enable``), dropped (``disable``) or left in
    the text (None): the model's ``reasoning_response``, which the agent APIs set per request."""
    stream_arguments: bool = False
    """Stream tool-call arguments as they are written (the agent APIs), not in one piece once
    the call is read."""

    def reader(self, admission: Admission) -> AnswerReader:
        """How a choice's text is read: reasoning apart, then the calls of the tools offered."""
        return AnswerReader.for_admission(
            admission,
            reasoning_response=self.reasoning_response,
            tools=self.tools,
            constrained=self.job.constrained,
            stream_arguments=self.stream_arguments,
        )


# ---------------------------------------------------------------------- preparing


async def prepare_chat(runner: Runner, req: ChatCompletionRequest, *, drop_unusable_tools: bool = False) -> ChatJob:
    """Validate a chat request against server and model settings and build its job, images
    loaded; nothing runs yet. ``drop_unusable_tools``: tools that cannot be used here (turned
    off, or a model without tool support) are dropped with a warning instead of refused."""
    req.unsupported_features()
    sampling = prepare_sampling(runner, req)
    entry = sampling.entry
    model = runner.manager.model_settings(entry)
    dropped: tuple[str, ...] = ()
    reason = _tools_unusable(runner, req, sampling) if req.tools else None
    if reason is not None and drop_unusable_tools:
        names = ", ".join(t.function.name for t in req.tools or ())
        dropped = (f"tools ({names}) were dropped: {reason}",)
        req = req.model_copy(update={"tools": None, "tool_choice": None, "parallel_tool_calls": None})
    tools, constraint = _tools_and_constraint(runner, req, sampling)
    refuse_images(req, entry, runner.manager.entries)
    params = replace(sampling.params(req), constraint=constraint)
    messages = tuple(m.to_template() for m in req.messages)
    kwargs = req.template_kwargs()
    requests = [
        GenerationRequest(
            request_id,
            choice_params(params, i),
            messages=messages,
            chat_template_kwargs=kwargs,
            tools=tuple(tools) or None,
            tool_format=model.tool_parser,
        )
        for i, request_id in enumerate(request_ids(sampling.n))
    ]
    job = runner.job(entry, requests, prompt_of=[0] * sampling.n, stream=sampling.stream, prompt_param="messages", asked=f"n {sampling.n}")
    images = await load_request_images(req, runner.settings)
    if images is not None:
        job.requests = [replace(r, messages=images.messages(r.messages or ()), images=images.images) for r in job.requests]
    return ChatJob(
        job=job,
        model=model,
        include_usage=sampling.include_usage,
        stream_format=sampling.stream_format,
        tools=tools,
        parallel_tool_calls=req.parallel_tool_calls is not False,
        warnings=dropped + (images.warnings if images is not None else ()),
        reasoning_response=model.reasoning_response,
    )


def _tools_unusable(runner: Runner, req: ChatCompletionRequest, sampling: Sampling) -> str | None:
    """Why the request's tools cannot be used with this server and model, if they cannot."""
    if not runner.settings.defaults.enable_function_calling:
        return "function calling is disabled on this server (defaults.enable_function_calling)"
    if not sampling.entry.supports_tools:
        return f"model {sampling.entry.id!r} does not support tools (supports_tools, or its chat template)"
    return None


def _tools_and_constraint(
    runner: Runner, req: ChatCompletionRequest, sampling: Sampling
) -> tuple[list[dict[str, Any]], Constraint | None]:
    """The tools offered to the model and the grammar its output must follow, if any.
    Refuses tools where they are turned off and schemas the grammar engine cannot honour."""
    defaults = runner.settings.defaults
    if req.tools:
        reason = _tools_unusable(runner, req, sampling)
        if reason is None and len(req.tools) > defaults.max_tools:
            reason = f"at most {defaults.max_tools} tools are allowed (defaults.max_tools)"
        if reason is not None:
            raise InvalidRequest(f"Tools cannot be used here: {reason}.", param="tools")
    answer = req.response_format.answer_schema() if req.response_format is not None else None
    offered = req.offered_tools()
    forced = req.forced_tools()
    constrained = forced if forced is not None else (offered if answer is not None else [])
    enforced = {id(tool) for tool in constrained}  # the request's own objects: no deep comparisons
    for i, tool in enumerate(req.tools or ()):
        _check_schema(runner, tool.function.parameters, f"tools[{i}].function.parameters", enforce=id(tool) in enforced)
    if answer is not None:
        _check_schema(runner, answer, "response_format", enforce=True)
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


def _check_schema(runner: Runner, schema: dict[str, Any] | None, param: str, *, enforce: bool) -> None:
    """A schema must be small and shallow and, when it will be enforced, within what the
    grammar engine supports (its complaint names the unsupported keys)."""
    if schema is None:
        return
    defaults = runner.settings.defaults
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


# ---------------------------------------------------------------------- running


async def chat_response(runner: Runner, chat: ChatJob) -> ChatCompletionResponse:
    """Run the job to its end: the whole answer."""
    run = await runner.start(chat.job)
    texts, tokens = await run.collect([""] * len(chat.job.requests))
    choices = []
    for index, admission in enumerate(run.admissions):
        piece = chat.reader(admission).feed(texts[index], final=True)
        calls = piece.calls if chat.parallel_tool_calls else piece.calls[:1]
        message = ResponseMessage(
            content=(piece.content or None) if calls else piece.content,
            tool_calls=[tool_call(c.id, c.name, c.arguments) for c in calls] or None,
            reasoning_content=piece.reasoning,
        )
        choices.append(
            Choice(
                index=index,
                message=message,
                logprobs=chat_logprobs(tokens[index]) if chat.job.requests[index].params.logprobs else None,
                finish_reason=finish_reason(run.last[index].finish_reason, bool(calls)),
            )
        )
    run.log_done([choice.finish_reason for choice in choices])
    return envelope(ChatCompletionResponse, "chatcmpl", chat.job.entry.id)(choices, run.usage())


async def chat_stream(runner: Runner, chat: ChatJob) -> AsyncIterator[ChatCompletionChunk | None]:
    """Start generation (errors raise here), then return the chunk stream (None: keep-alive)."""
    run = await runner.start(chat.job)
    return chat_chunks(chat, run)


async def chat_chunks(chat: ChatJob, run: Run) -> AsyncIterator[ChatCompletionChunk | None]:
    """The chunks of a started job (None: keep-alive); the run's usage chunk last when asked."""
    chunk = envelope(ChatCompletionChunk, "chatcmpl", chat.job.entry.id)
    for index in range(len(chat.job.requests)):
        yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    readers = [chat.reader(a) for a in run.admissions]
    called = [0] * len(run.admissions)
    streaming: list[list[str]] = [[] for _ in run.admissions]
    """Per choice, the ids of the calls streamed so far (``stream_arguments``)."""
    finishes: dict[int, str] = {}
    async for index, item in run.events:
        if item is None:
            yield None  # keep-alive
            continue
        final = item.finish_reason is not None
        piece = readers[index].feed(item.text, final=final)
        logprobs = chat_logprobs(list(item.logprobs)) if item.logprobs else None
        if piece.content or piece.reasoning or logprobs:
            delta = Delta(content=piece.content or None, reasoning_content=piece.reasoning)
            yield chunk([ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
        if chat.stream_arguments:
            for delta in _streamed_call_deltas(piece.deltas, streaming[index], chat.parallel_tool_calls):
                yield chunk([ChunkChoice(index=index, delta=delta)])
            called[index] = len(streaming[index])
        for call in [] if chat.stream_arguments else piece.calls:
            if called[index] and not chat.parallel_tool_calls:
                break
            for delta in tool_call_deltas(call.id, call.name, call.arguments, called[index]):
                yield chunk([ChunkChoice(index=index, delta=delta)])
            called[index] += 1
        if final:
            finish = finish_reason(item.finish_reason, bool(called[index]))
            finishes[index] = finish
            yield chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=finish)])
    run.log_done([finishes[i] for i in sorted(finishes)])
    if chat.include_usage:
        yield chunk([], run.usage())


def _streamed_call_deltas(deltas: list[CallDelta], ids: list[str], parallel: bool) -> list[Delta]:
    """Chat deltas of call pieces as they are written; ``ids``: the calls of this choice so far
    (extended here). Without ``parallel``, the pieces of calls after the first are dropped."""
    out = []
    for piece in deltas:
        if piece.id not in ids:
            if ids and not parallel:
                continue
            ids.append(piece.id)
            function = FunctionCallDelta(name=piece.name, arguments=piece.arguments)
            out.append(Delta(tool_calls=[ToolCallDelta(index=len(ids) - 1, id=piece.id, type="function", function=function)]))
        elif piece.arguments:
            function = FunctionCallDelta(arguments=piece.arguments)
            out.append(Delta(tool_calls=[ToolCallDelta(index=ids.index(piece.id), function=function)]))
    return out
