"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: the Anthropic Messages API as a
translation layer onto the generation service (see :mod:`mlx_router.protocol.anthropic`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from mlx_router.api.disconnect import unless_disconnected
from mlx_router.api.serving.chat_bridge import ChatRun, count_prompt, start_chat
from mlx_router.api.serving.runner import Runner
from mlx_router.api.sse import NamedEvent, event_stream_response
from mlx_router.api.vision import warnings_header
from mlx_router.errors import RouterError
from mlx_router.protocol.anthropic import (
    CountTokensRequest,
    CountTokensResponse,
    MessageBuilder,
    MessagesRequest,
    anthropic_error,
    reasoning_choice,
    to_chat,
)

__all__ = ["count_tokens", "create_message"]

logger = logging.getLogger(__name__)


async def _events(started: ChatRun, builder: MessageBuilder) -> AsyncIterator[list[NamedEvent] | None]:
    yield builder.start()
    async for found in started.pieces():
        if found is None:
            yield [("ping", {"type": "ping"})]
            continue
        yield [event for piece in found for event in builder.feed(piece)]
    yield builder.finish(started.output_tokens, started.stop_sequence)


def _error_events(error: RouterError) -> list[NamedEvent]:
    return [("error", anthropic_error(error))]


async def create_message(runner: Runner, body: MessagesRequest, request: Request) -> JSONResponse | StreamingResponse:
    chat, warnings = to_chat(body, max_tokens_limit=runner.settings.defaults.max_tokens_limit)
    started = await start_chat(runner, chat, warnings, reasoning_choice(body))
    builder = MessageBuilder(body.model, started.prompt_tokens, started.cached_tokens, started.cache_creation_tokens)
    headers = warnings_header(tuple(warnings.items))
    logger.info(
        "messages model=%s stream=%s prompt_tokens=%d cached_tokens=%d ignored=%s",
        body.model, bool(body.stream), started.prompt_tokens, started.cached_tokens, "; ".join(warnings.items) or "-",
    )
    if body.stream:
        stream = event_stream_response(_events(started, builder), _error_events)
        stream.headers.update(headers)
        return stream

    async def collect() -> None:
        async for _ in _events(started, builder):
            pass

    await unless_disconnected(request, collect())
    return JSONResponse(builder.message.model_dump(), headers=headers | started.chat.job.headers())


async def count_tokens(runner: Runner, body: CountTokensRequest) -> JSONResponse:
    chat, warnings = to_chat(body, max_tokens_limit=1)
    counted = CountTokensResponse(input_tokens=await count_prompt(runner, chat, warnings))
    return JSONResponse(counted.model_dump(), headers=warnings_header(tuple(warnings.items)))
