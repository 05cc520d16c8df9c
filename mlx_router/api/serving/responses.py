"""``/v1/responses``: the OpenAI Responses API as a translation layer onto the generation
service (see :mod:`mlx_router.protocol.responses`), with stored responses in SQLite."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from mlx_router.api.disconnect import unless_disconnected
from mlx_router.api.serving.chat_bridge import count_prompt, start_chat
from mlx_router.api.serving.runner import Runner
from mlx_router.api.sse import NamedEvent, event_stream_response
from mlx_router.api.vision import warnings_header
from mlx_router.errors import InvalidRequest, NotFound, RouterError
from mlx_router.protocol.responses import (
    InputTokens,
    InputTokensRequest,
    ResponseBuilder,
    ResponsesRequest,
    input_items,
    reasoning_choice,
    to_chat,
)
from mlx_router.store.responses import ResponseStore

__all__ = ["count_input_tokens", "create_response", "delete_response", "get_response", "list_input_items"]

logger = logging.getLogger(__name__)


def _missing(response_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"No response with id {response_id!r} is stored (never stored, deleted or expired).", param=param)


async def _history(store: ResponseStore, previous_response_id: str | None) -> list[dict[str, Any]]:
    """The stored items a request continues (none without ``previous_response_id``)."""
    if previous_response_id is None:
        return []
    previous = await asyncio.to_thread(store.get, previous_response_id)
    if previous is None:
        raise _missing(previous_response_id, "previous_response_id")
    return previous.history()


async def count_input_tokens(runner: Runner, store: ResponseStore, body: InputTokensRequest) -> JSONResponse:
    """The input tokens a response request would have (instructions, tools and the stored
    history of ``previous_response_id`` included), tokenized by the model's worker, never run."""
    model = body.model or runner.settings.defaults.model
    if model is None:
        raise InvalidRequest("model is required: this server has no default model (defaults.model).", param="model")
    req, unused = body.as_request(model)
    chat, warnings = to_chat(req, await _history(store, req.previous_response_id), max_tokens_limit=1)
    warnings.ignored_fields(unused)
    counted = InputTokens(input_tokens=await count_prompt(runner, chat, warnings))
    return JSONResponse(counted.model_dump(), headers=warnings_header(tuple(warnings.items)))


async def create_response(
    runner: Runner, store: ResponseStore, body: ResponsesRequest, request: Request
) -> JSONResponse | StreamingResponse:
    history = await _history(store, body.previous_response_id)
    chat, warnings = to_chat(body, history, max_tokens_limit=runner.settings.defaults.max_tokens_limit)
    started = await start_chat(runner, chat, warnings, reasoning_choice(body))
    keep = body.store is not False
    builder = ResponseBuilder(body, body.model, store=keep)
    items = input_items(body.items())
    headers = warnings_header(tuple(warnings.items))
    logger.info(
        "responses model=%s stream=%s prompt_tokens=%d cached_tokens=%d ignored=%s",
        body.model, bool(body.stream), started.prompt_tokens, started.cached_tokens, "; ".join(warnings.items) or "-",
    )

    async def events() -> AsyncIterator[list[NamedEvent] | None]:
        yield builder.start()
        async for found in started.pieces():
            yield None if found is None else [event for piece in found for event in builder.feed(piece)]
        done = builder.finish_with(started.prompt_tokens, started.cached_tokens, started.output_tokens, started.cache_creation_tokens)
        if keep:
            await asyncio.to_thread(store.put, builder.response, items, [*history, *items])
        yield done

    if body.stream:
        def failed(error: RouterError) -> list[NamedEvent]:
            return builder.fail(error.code or error.error_type, error.message)

        stream = event_stream_response(events(), failed)
        stream.headers.update(headers)
        return stream

    async def collect() -> None:
        async for _ in events():
            pass

    await unless_disconnected(request, collect())
    return JSONResponse(builder.response, headers=headers | started.chat.job.headers())


async def get_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    stored = await asyncio.to_thread(store.get, response_id)
    if stored is None:
        raise _missing(response_id)
    return stored.response


async def delete_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    if not await asyncio.to_thread(store.delete, response_id):
        raise _missing(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


async def list_input_items(
    store: ResponseStore, response_id: str, *, limit: int, order: str, after: str | None
) -> dict[str, Any]:
    """A page of the response's own input items (``order`` desc: newest first, as OpenAI)."""
    stored = await asyncio.to_thread(store.get, response_id)
    if stored is None:
        raise _missing(response_id)
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
        "has_more": len(items) > limit,
    }
