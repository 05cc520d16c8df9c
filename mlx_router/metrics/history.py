"""Short in-memory history for the status page: request and token counts per 10 seconds, and
the last errors sent to clients.

Prometheus keeps long histories; this is what the built-in page plots without one. Both are
bounded (``server.status_history_seconds``, ``server.status_errors_kept``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BUCKET_SECONDS", "ActivityHistory", "ErrorEntry", "RecentErrors"]

BUCKET_SECONDS = 10
MAX_MESSAGE = 300
"""Characters of an error message kept (messages are written for users: no paths or secrets)."""


class ActivityHistory:
    """Generation requests started and tokens generated, per ``BUCKET_SECONDS`` of wall time."""

    def __init__(self, window_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self.buckets = max(1, window_seconds // BUCKET_SECONDS)
        self._clock = clock
        self._counts: deque[list[int]] = deque(maxlen=self.buckets)
        """[bucket number, requests, tokens], oldest first; buckets with nothing are absent."""

    def _current(self) -> list[int]:
        number = int(self._clock() // BUCKET_SECONDS)
        if not self._counts or self._counts[-1][0] != number:
            self._counts.append([number, 0, 0])
        return self._counts[-1]

    def add_request(self) -> None:
        self._current()[1] += 1

    def add_tokens(self, tokens: int) -> None:
        self._current()[2] += tokens

    def snapshot(self) -> list[dict[str, int]]:
        """Every bucket of the window, oldest first, zeros included; the last is still filling."""
        now = int(self._clock() // BUCKET_SECONDS)
        counts = {number: (requests, tokens) for number, requests, tokens in self._counts}
        return [
            {"start": number * BUCKET_SECONDS, "requests": counts.get(number, (0, 0))[0], "tokens": counts.get(number, (0, 0))[1]}
            for number in range(now - self.buckets + 1, now + 1)
        ]


@dataclass(frozen=True)
class ErrorEntry:
    time: float
    """Unix time the response ended."""
    status: int
    code: str
    message: str
    model: str | None
    route: str


class RecentErrors:
    """The last ``kept`` errors, newest last."""

    def __init__(self, kept: int, clock: Callable[[], float] = time.time) -> None:
        self._entries: deque[ErrorEntry] = deque(maxlen=kept)
        self._clock = clock

    def add(self, status: int, code: str, message: str, model: str | None, route: str) -> None:
        if self._entries.maxlen:
            self._entries.append(ErrorEntry(round(self._clock(), 3), status, code, message[:MAX_MESSAGE], model, route))

    def snapshot(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in self._entries]
