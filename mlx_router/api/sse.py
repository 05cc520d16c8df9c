"""Writers for streamed responses: SSE (OpenAI), ``json_lines`` and ``json_array``.

``sse``        ``data: {chunk}\\n\\n`` per chunk, ``data: [DONE]\\n\\n`` at the end; ``: keep-alive``
               comments while nothing was produced for ``keepalive`` seconds (long prefills).
``json_lines`` one chunk object per line, then ``{"done": true}``.
``json_array`` a JSON array of chunk objects, written as the chunks are produced.

An error inside a stream becomes the error envelope as the last item (before ``[DONE]`` / the
done marker / the closing bracket).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Literal

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from mlx_router.errors import InternalError, RouterError
from mlx_router.metrics.context import note_error

__all__ = [
    "MEDIA_TYPES",
    "NamedEvent",
    "StreamFormat",
    "event_stream_response",
    "stream_response",
    "write_events",
    "write_stream",
]

logger = logging.getLogger(__name__)

StreamFormat = Literal["sse", "json_lines", "json_array"]
MEDIA_TYPES: dict[str, str] = {
    "sse": "text/event-stream",
    "json_lines": "application/x-ndjson",
    "json_array": "application/json",
}


def _dump(item: BaseModel | dict[str, object]) -> str:
    if isinstance(item, BaseModel):
        return item.model_dump_json(exclude_none=False)
    return json.dumps(item, separators=(",", ":"))


async def write_stream(items: AsyncIterator[BaseModel | None], fmt: StreamFormat) -> AsyncIterator[str]:
    """Serialize ``items`` in ``fmt``; errors raised by ``items`` end the stream cleanly.

    A ``None`` item means "still working" (the producer yields one after
    ``server.sse_keepalive_seconds`` without output): SSE sends a ``: keep-alive`` comment."""
    first = True
    error: RouterError | None = None
    if fmt == "json_array":
        yield "["
    try:
        async for item in items:
            if item is None:
                if fmt == "sse":
                    yield ": keep-alive\n\n"
                continue
            yield _frame(_dump(item), fmt, first)
            first = False
    except RouterError as exc:
        error = exc
    except Exception:
        logger.exception("Stream failed")
        error = InternalError("The stream failed with an internal error; see the server log.")
    if error is not None:
        note_error(error.status_code, error.code, error.message)
        yield _frame(json.dumps(error.to_dict()), fmt, first)
    if fmt == "sse":
        yield "data: [DONE]\n\n"
    elif fmt == "json_lines":
        yield '{"done":true}\n'
    else:
        yield "]\n"


def _frame(payload: str, fmt: StreamFormat, first: bool) -> str:
    if fmt == "sse":
        return f"data: {payload}\n\n"
    if fmt == "json_lines":
        return payload + "\n"
    return payload if first else "," + payload


def stream_response(items: AsyncIterator[BaseModel | None], fmt: StreamFormat) -> StreamingResponse:
    """A streaming HTTP response for ``items`` in ``fmt``."""
    return StreamingResponse(
        write_stream(items, fmt),
        media_type=MEDIA_TYPES[fmt],
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


NamedEvent = tuple[str, dict[str, object]]
"""(event name, data) of the agent APIs' streams (Anthropic Messages, OpenAI Responses)."""


async def write_events(
    items: AsyncIterator[list[NamedEvent] | None], on_error: Callable[[RouterError], list[NamedEvent]]
) -> AsyncIterator[str]:
    """Serialize named events as SSE (``event: NAME`` and ``data: JSON``); ``None`` sends a
    keep-alive comment. A failure becomes the events ``on_error`` makes of it; no ``[DONE]``."""
    try:
        async for events in items:
            if events is None:
                yield ": keep-alive\n\n"
                continue
            for name, data in events:
                yield f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    except Exception as exc:
        if isinstance(exc, RouterError):
            error = exc
        else:
            logger.exception("Stream failed")
            error = InternalError("The stream failed with an internal error; see the server log.")
        note_error(error.status_code, error.code, error.message)
        for name, data in on_error(error):
            yield f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_stream_response(
    items: AsyncIterator[list[NamedEvent] | None], on_error: Callable[[RouterError], list[NamedEvent]]
) -> StreamingResponse:
    """A ``text/event-stream`` response of named events."""
    return StreamingResponse(
        write_events(items, on_error),
        media_type=MEDIA_TYPES["sse"],
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
