"""The record of the HTTP request being served, shared by the layers that learn about it.

The middleware opens a :class:`RequestRecord` per request and counts it when the response is
done. Deeper layers fill in what only they know: the manager the model id a request resolved to
(:func:`note_model`), the stream writer an error sent inside a 200 stream (:func:`note_error`).
It is a mutable object in a context variable so that tasks started for the request (the
streaming body, disconnect watchers) write into the same record.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

__all__ = ["CURRENT_REQUEST", "RequestRecord", "note_error", "note_model"]


@dataclass
class RequestRecord:
    """What is known about one HTTP request by the time its response is done."""

    model: str | None = None
    """The registry id the request resolved to (never an unresolved, client-chosen string)."""
    stream_error: tuple[int, str, str] | None = None
    """(status, code, message) of an error sent inside a stream whose HTTP status was 200."""


CURRENT_REQUEST: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("current_request", default=None)


def note_model(model_id: str) -> None:
    """The current request (if any) is about ``model_id``."""
    record = CURRENT_REQUEST.get()
    if record is not None:
        record.model = model_id


def note_error(status: int, code: str | None, message: str) -> None:
    """The current request's stream ended with this error."""
    record = CURRENT_REQUEST.get()
    if record is not None:
        record.stream_error = (status, code or "", message)
