"""The status page's short history: 10-second buckets of requests and tokens, recent errors."""

from __future__ import annotations

from mlx_router.metrics.history import BUCKET_SECONDS, MAX_MESSAGE, ActivityHistory, RecentErrors


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_land_in_their_bucket_and_empty_buckets_are_zero() -> None:
    clock = Clock(1000.0)
    history = ActivityHistory(60, clock)
    history.add_request()
    history.add_tokens(5)
    clock.now = 1015.0  # next bucket but one: 1010 stays empty
    history.add_tokens(7)
    buckets = history.snapshot()
    assert len(buckets) == 60 // BUCKET_SECONDS
    assert [b["start"] for b in buckets] == [960, 970, 980, 990, 1000, 1010]
    assert buckets[-2] == {"start": 1000, "requests": 1, "tokens": 5}
    assert buckets[-1] == {"start": 1010, "requests": 0, "tokens": 7}


def test_old_buckets_fall_out_of_the_window() -> None:
    clock = Clock(0.0)
    history = ActivityHistory(30, clock)
    for second in range(0, 100, 10):
        clock.now = float(second)
        history.add_request()
    buckets = history.snapshot()
    assert [b["start"] for b in buckets] == [70, 80, 90]
    assert all(b["requests"] == 1 for b in buckets)
    clock.now = 500.0  # nothing for a long time: the window is empty, not stale
    assert all(b["requests"] == 0 for b in history.snapshot())


def test_recent_errors_keep_the_last_ones_with_short_messages() -> None:
    errors = RecentErrors(2, Clock(42.0))
    for status in (400, 404, 500):
        errors.add(status, "code", "x" * (MAX_MESSAGE + 50), "m", "/r")
    kept = errors.snapshot()
    assert [e["status"] for e in kept] == [404, 500]
    assert kept[0] == {"time": 42.0, "status": 404, "code": "code", "message": "x" * MAX_MESSAGE, "model": "m", "route": "/r"}
    none_kept = RecentErrors(0)
    none_kept.add(500, "c", "m", None, "/r")
    assert none_kept.snapshot() == []
