"""Stopping work whose client has gone away (non-streaming requests).

Streams notice a disconnect when writing; a non-streaming request would otherwise generate to
the end for nobody. Once FastAPI has read the body, the next ASGI ``receive()`` returns only
when the client disconnects, so waiting on it costs nothing while the client stays.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from mlx_router.errors import RouterError

__all__ = ["ClientDisconnected", "unless_disconnected"]

T = TypeVar("T")


class ClientDisconnected(RouterError):
    """The client closed the connection; nobody reads this response."""

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_closed_request"


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it (and with it the generation) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected("The client closed the connection.")
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
