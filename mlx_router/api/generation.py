"""Chat generation as a service: wire request in, wire response or chunk stream out.

The only place where protocol objects become engine requests and engine chunks become
protocol objects. Routes stay thin; the manager and engine never see the wire format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from mlx_router import __version__
from mlx_router.config.settings import Settings
from mlx_router.engine.client import EngineFailure
from mlx_router.engine.types import Admission, EngineError, GenerationChunk, GenerationRequest
from mlx_router.errors import (
    GenerationTimeout,
    InsufficientMemory,
    InternalError,
    InvalidRequest,
    RouterError,
    WorkerCrashed,
    redact_paths,
)
from mlx_router.logs import REQUEST_ID
from mlx_router.manager.manager import MLXModelManager
from mlx_router.manager.registry import ModelEntry
from mlx_router.protocol.chat import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    Delta,
    ModelDefaults,
    ResponseMessage,
)
from mlx_router.protocol.common import new_id, now, usage
from mlx_router.text.reasoning import ReasoningSplitter

__all__ = ["ChatService", "SYSTEM_FINGERPRINT", "engine_error"]

logger = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = f"fp_mlx_router_{__version__}"


def engine_error(error: EngineError) -> RouterError:
    """Map an engine failure to the client-visible error (library text may name files)."""
    error = replace(error, message=redact_paths(error.message))
    if error.kind == "invalid_request":
        return InvalidRequest(error.message, param="messages")
    if error.kind == "context_length":
        return InvalidRequest(error.message, param="messages", code="context_length_exceeded")
    if error.kind == "out_of_memory":
        return InsufficientMemory(f"Out of memory during generation: {error.message}")
    if error.kind == "worker_crashed":
        return WorkerCrashed(f"The model worker stopped: {error.message}. Retry; a fresh worker will start.")
    return InternalError(error.message)


@dataclass
class _Prepared:
    entry: ModelEntry
    request: GenerationRequest
    stream: bool
    include_usage: bool

    def splitter(self, admission: Admission) -> ReasoningSplitter | None:
        """A reasoning splitter when the model's ``reasoning_response`` asks for one."""
        if self.entry.config.reasoning_response is None:
            return None
        return ReasoningSplitter(inside=admission.reasoning_open)

    def reasoning_out(self, reasoning: str) -> str | None:
        """Reasoning text as returned: separated when enabled, dropped when disabled."""
        return reasoning if reasoning and self.entry.config.reasoning_response == "enable" else None


class ChatService:
    """Runs chat completions against the manager's models."""

    def __init__(self, manager: MLXModelManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings
        self.requests_total = 0
        self.requests_failed = 0

    def prepare(self, req: ChatCompletionRequest) -> _Prepared:
        """Validate against server and model settings; nothing is loaded yet."""
        defaults = self.settings.defaults
        req.unsupported_features()
        entry = self.manager.resolve(req.model)
        if req.tools:
            if not defaults.enable_function_calling:
                reason = "function calling is disabled on this server (defaults.enable_function_calling)"
            elif entry.config.supports_tools is False:
                reason = f"model {entry.id!r} does not support tools (supports_tools is false)"
            else:
                reason = "tool calling is not implemented in this version of mlx-router"
            raise InvalidRequest(f"Tools cannot be used here: {reason}.", param="tools")
        image_at = req.first_image()
        if image_at is not None:
            reason = (
                "image input is not implemented in this version of mlx-router"
                if entry.config.supports_vision
                else f"model {entry.id!r} cannot read images (it is not marked supports_vision)"
            )
            raise InvalidRequest(f"Images cannot be used here: {reason}.", param=f"messages[{image_at}].content")
        cap, _level = self.manager.max_tokens_cap(entry)
        model_defaults = ModelDefaults(
            max_tokens=entry.config.max_tokens or defaults.max_tokens,
            temperature=entry.config.temp if entry.config.temp is not None else 0.7,
            top_p=entry.config.top_p if entry.config.top_p is not None else 1.0,
            top_k=entry.config.top_k or 0,
            min_p=entry.config.min_p or 0.0,
            max_tokens_cap=cap,
        )
        params = req.to_generation_params(model_defaults, max_tokens_limit=defaults.max_tokens_limit)
        request = GenerationRequest(
            request_id=REQUEST_ID.get() if REQUEST_ID.get() != "-" else new_id("gen"),
            params=params,
            messages=tuple(m.to_template() for m in req.messages),
        )
        stream = defaults.stream if req.stream is None else req.stream
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream_options is not None and not stream:
            raise InvalidRequest("stream_options is only allowed when stream is true.", param="stream_options")
        return _Prepared(entry, request, stream, include_usage)

    async def _events(self, prep: _Prepared) -> AsyncIterator[Admission | GenerationChunk]:
        """Admission, then chunks, under the request timeout; the model is held throughout."""
        deadline = time.monotonic() + self.settings.defaults.timeout
        self.requests_total += 1
        try:
            async for item in self._generate(prep, deadline):
                yield item
        except RouterError:
            self.requests_failed += 1
            raise

    async def _generate(self, prep: _Prepared, deadline: float) -> AsyncIterator[Admission | GenerationChunk]:
        async with self.manager.acquire(prep.entry.id) as lm:
            events = lm.client.generate(prep.request)
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    try:
                        item = await asyncio.wait_for(events.__anext__(), remaining)
                    except StopAsyncIteration:
                        return
                    yield item
            except asyncio.TimeoutError:
                raise GenerationTimeout(
                    f"Generation stopped after {self.settings.defaults.timeout:g} s (defaults.timeout)."
                ) from None
            except EngineFailure as exc:
                raise engine_error(exc.error) from None
            finally:
                await events.aclose()

    async def start(self, prep: _Prepared) -> tuple[Admission, AsyncIterator[Admission | GenerationChunk]]:
        """Load the model if needed and get the request admitted, so errors so far are HTTP errors."""
        events = self._events(prep)
        first = await events.__anext__()
        assert isinstance(first, Admission)
        return first, events

    async def complete(self, prep: _Prepared) -> ChatCompletionResponse:
        admission, events = await self.start(prep)
        started = time.perf_counter()
        parts: list[str] = []
        last: GenerationChunk | None = None
        async for item in events:
            if isinstance(item, GenerationChunk):
                parts.append(item.text)
                last = item
        assert last is not None and last.finish_reason is not None
        self._log_done(prep, admission, last, time.perf_counter() - started)
        content, reasoning = "".join(parts), ""
        splitter = prep.splitter(admission)
        if splitter is not None:
            reasoning, content = splitter.feed(content)
            more_reasoning, more_content = splitter.flush()
            reasoning, content = reasoning + more_reasoning, content + more_content
        return ChatCompletionResponse(
            id=new_id("chatcmpl"),
            created=now(),
            model=prep.entry.id,
            choices=[
                Choice(
                    index=0,
                    message=ResponseMessage(content=content, reasoning_content=prep.reasoning_out(reasoning)),
                    finish_reason=_finish(last.finish_reason),
                )
            ],
            usage=usage(admission.prompt_tokens, last.completion_tokens),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )

    async def stream(self, prep: _Prepared) -> AsyncIterator[ChatCompletionChunk]:
        """Start generation (errors raise here), then return the chunk stream."""
        admission, events = await self.start(prep)
        return self._chunks(prep, admission, events)

    async def _chunks(
        self, prep: _Prepared, admission: Admission, events: AsyncIterator[Admission | GenerationChunk]
    ) -> AsyncIterator[ChatCompletionChunk]:
        chunk_id, created, model = new_id("chatcmpl"), now(), prep.entry.id
        started = time.perf_counter()

        def chunk(delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=model,
                choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
                system_fingerprint=SYSTEM_FINGERPRINT,
            )

        yield chunk(Delta(role="assistant", content=""))
        splitter = prep.splitter(admission)
        last: GenerationChunk | None = None
        try:
            async for item in events:
                if not isinstance(item, GenerationChunk):
                    continue
                last = item
                reasoning, content = "", item.text
                if splitter is not None:
                    reasoning, content = splitter.feed(item.text)
                    if item.finish_reason is not None:
                        more_reasoning, more_content = splitter.flush()
                        reasoning, content = reasoning + more_reasoning, content + more_content
                shown_reasoning = prep.reasoning_out(reasoning)
                if content or shown_reasoning:
                    yield chunk(Delta(content=content or None, reasoning_content=shown_reasoning))
                if item.finish_reason is not None:
                    yield chunk(Delta(), _finish(item.finish_reason))
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if last is not None:
            self._log_done(prep, admission, last, time.perf_counter() - started)
            if prep.include_usage:
                yield ChatCompletionChunk(
                    id=chunk_id,
                    created=created,
                    model=model,
                    choices=[],
                    usage=usage(admission.prompt_tokens, last.completion_tokens),
                    system_fingerprint=SYSTEM_FINGERPRINT,
                )

    def _log_done(self, prep: _Prepared, admission: Admission, last: GenerationChunk, seconds: float) -> None:
        logger.info(
            "model=%s prompt_tokens=%d completion_tokens=%d finish=%s %.2fs %.1f tok/s",
            prep.entry.id,
            admission.prompt_tokens,
            last.completion_tokens,
            last.finish_reason,
            seconds,
            last.completion_tokens / seconds if seconds > 0 else 0.0,
        )


def _finish(reason: str) -> str:
    return "stop" if reason == "cancelled" else reason
