"""``POST /v1/completions`` (legacy text completions): raw prompts, ``n`` choices each, run by
the shared runner; choices are numbered prompt by prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from mlx_router.api.serving.runner import Job, Run, Runner, choice_params, request_ids
from mlx_router.api.serving.sampling import prepare_sampling
from mlx_router.api.sse import StreamFormat
from mlx_router.engine.types import GenerationRequest
from mlx_router.errors import InvalidRequest
from mlx_router.protocol.common import envelope
from mlx_router.protocol.completions import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    completion_finish,
    legacy_logprobs,
    text_length,
)

__all__ = ["CompletionJob", "completion_response", "completion_stream", "prepare_completion"]


@dataclass
class CompletionJob:
    """A text completion ready to run."""

    job: Job
    include_usage: bool
    stream_format: StreamFormat
    echo: list[str]
    """Per choice, the prompt text it starts with (``echo``), else empty."""


def prepare_completion(runner: Runner, req: CompletionRequest) -> CompletionJob:
    """Validate a text completion request against server and model settings and build its job."""
    req.unsupported_features()
    sampling = prepare_sampling(runner, req)
    params = sampling.params(req)
    prompts = req.prompts()
    ids = iter(request_ids(len(prompts) * sampling.n))
    requests: list[GenerationRequest] = []
    prompt_of: list[int] = []
    echo: list[str] = []
    for p, prompt in enumerate(prompts):
        text = prompt if isinstance(prompt, str) else None
        tokens = tuple(prompt) if not isinstance(prompt, str) else None
        for i in range(sampling.n):
            requests.append(GenerationRequest(next(ids), choice_params(params, i), prompt=text, prompt_ids=tokens))
            prompt_of.append(p)
            echo.append((text or "") if req.echo else "")
    if req.echo and any(not isinstance(p, str) for p in prompts):
        raise InvalidRequest("echo is supported for text prompts only.", param="echo")
    asked = f"{len(prompts)} prompts × n {sampling.n}" if len(prompts) > 1 else f"n {sampling.n}"
    job = runner.job(sampling.entry, requests, prompt_of=prompt_of, stream=sampling.stream, prompt_param="prompt", asked=asked)
    return CompletionJob(job, sampling.include_usage, sampling.stream_format, echo)


async def completion_response(runner: Runner, completion: CompletionJob) -> CompletionResponse:
    """Run the job to its end: every choice's whole text."""
    run = await runner.start(completion.job)
    texts, tokens = await run.collect(completion.echo)
    requests = completion.job.requests
    choices = [
        CompletionChoice(
            text=texts[index],
            index=index,
            logprobs=legacy_logprobs(tokens[index], 0) if requests[index].params.logprobs else None,
            finish_reason=completion_finish(run.last[index].finish_reason),
        )
        for index in range(len(requests))
    ]
    run.log_done([choice.finish_reason or "" for choice in choices])
    return envelope(CompletionResponse, "cmpl", completion.job.entry.id)(choices, run.usage())


async def completion_stream(runner: Runner, completion: CompletionJob) -> AsyncIterator[CompletionResponse | None]:
    """Start generation (errors raise here), then return the chunk stream (None: keep-alive)."""
    run = await runner.start(completion.job)
    return _completion_chunks(completion, run)


async def _completion_chunks(completion: CompletionJob, run: Run) -> AsyncIterator[CompletionResponse | None]:
    chunk = envelope(CompletionResponse, "cmpl", completion.job.entry.id)
    offsets = [len(echo) for echo in completion.echo]
    for index, echo in enumerate(completion.echo):
        if echo:
            yield chunk([CompletionChoice(text=echo, index=index, finish_reason=None)])
    async for index, item in run.events:
        if item is None:
            yield None  # keep-alive
            continue
        logprobs = legacy_logprobs(list(item.logprobs), offsets[index]) if item.logprobs else None
        offsets[index] += sum(text_length(t) for t in item.logprobs)
        finish = completion_finish(item.finish_reason) if item.finish_reason is not None else None
        if item.text or logprobs or finish:
            yield chunk([CompletionChoice(text=item.text, index=index, logprobs=logprobs, finish_reason=finish)])
    run.log_done([completion_finish(run.last[i].finish_reason) for i in sorted(run.last)])
    if completion.include_usage:
        yield chunk([], run.usage())
