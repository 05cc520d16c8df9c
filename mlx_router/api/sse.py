"""Writers for streamed responses: SSE (OpenAI), ``json_lines`` and ``json_array``.

``sse``        ``data: {chunk}\\n\\n`` per chunk, ``data: [DONE]\\n\\n`` at the end; ``: keep-alive``
               comments while nothing was produced for ``keepalive`` seconds (long prefills).
``json_lines`` one chunk object per line, then ``{"done": true}``.
``json_array`` a JSON array of chunk objects, written as the chunks are produced.

An error inside a stream becomes the error envelope as the last item (before ``[DONE]`` / the
done marker / the closing bracket).

Frames that are ready together (a worker step that brought several chunks, an event that makes
several frames, a client that reads slower than the stream is written) go out in one ASGI body
message: see :class:`FrameStreamingResponse`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Literal

from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Send

from mlx_router.errors import InternalError, RouterError
from mlx_router.metrics.context import note_error
from mlx_router.protocol.chat import ChatCompletionChunk, chunk_json

__all__ = [
    "MEDIA_TYPES",
    "FrameStreamingResponse",
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
    if isinstance(item, ChatCompletionChunk):
        return chunk_json(item)
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


class FrameStreamingResponse(StreamingResponse):
    """A streaming response of text frames that sends the frames ready together as one body
    message.

    Every body message costs the same walk through the middlewares, h11 and a socket write,
    whatever its size. A task writes the body's frames into a list while this one sends: one frame
    that comes alone is sent at once, as before (no timer, no added latency); frames that came
    while the last send was under way, or that one step of the source made without waiting,
    are joined and sent in one message. The bytes are those of the frames in order.
    Cancelling the response (the client went away) cancels the task, and so the source."""

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        ready: list[bytes] = []
        waiting: asyncio.Future[None] | None = None

        def wake(_: object = None) -> None:
            if waiting is not None and not waiting.done():
                waiting.set_result(None)

        async def produce() -> None:
            async for frame in self.body_iterator:
                ready.append(frame.encode(self.charset) if isinstance(frame, str) else bytes(frame))
                wake()

        producer = asyncio.ensure_future(produce())
        producer.add_done_callback(wake)
        try:
            while ready or not producer.done():
                if not ready:
                    waiting = asyncio.get_running_loop().create_future()
                    await waiting
                    continue
                body = b"".join(ready)
                ready.clear()
                await send({"type": "http.response.body", "body": body, "more_body": True})
            producer.result()
        finally:
            if not producer.done():
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def stream_response(items: AsyncIterator[BaseModel | None], fmt: StreamFormat) -> StreamingResponse:
    """A streaming HTTP response for ``items`` in ``fmt``."""
    return FrameStreamingResponse(
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
    return FrameStreamingResponse(
        write_events(items, on_error),
        media_type=MEDIA_TYPES["sse"],
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
