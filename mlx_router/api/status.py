"""What the status page shows, as one typed object (``GET /v1/status``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from mlx_router import __version__
from mlx_router.api.serving.runner import Runner
from mlx_router.manager.manager import MLXModelManager
from mlx_router.manager.reports import AdminModelRow
from mlx_router.metrics.history import BUCKET_SECONDS
from mlx_router.metrics.registry import RouterMetrics

__all__ = ["StatusReport", "status_report"]


@dataclass(frozen=True)
class MemoryStatus:
    budget_bytes: int
    resident_bytes: int
    total_bytes: int
    available_bytes: int
    swap_percent: float
    pressure: str


@dataclass(frozen=True)
class RequestActivity:
    total: int
    failed: int
    running: int


@dataclass(frozen=True)
class History:
    bucket_seconds: int
    buckets: list[dict[str, int]]


@dataclass(frozen=True)
class StatusReport:
    version: str
    status: Literal["ok", "unavailable"]
    reason: str | None
    time: float
    uptime_seconds: float
    memory: MemoryStatus
    cache_size: int | None
    models: list[AdminModelRow]
    requests: RequestActivity
    history: History
    errors: list[dict[str, Any]]
    """The recent errors, newest first (message, status, code, model, route, time)."""


def status_report(manager: MLXModelManager, runner: Runner, metrics: RouterMetrics) -> StatusReport:
    """Models and their states, memory against the budget, pressure, request and token counts
    per 10 seconds, and the recent errors (newest first)."""
    readiness = manager.readiness(draining=runner.draining)
    snapshot = manager.monitor.snapshot()
    stats = manager.model_stats()  # reads each model's config once per poll
    return StatusReport(
        version=__version__,
        status=readiness.status,
        reason=readiness.reason,
        time=round(time.time(), 3),
        uptime_seconds=round(time.time() - manager.started_at, 1),
        memory=MemoryStatus(
            budget_bytes=manager.budget_bytes,
            resident_bytes=sum(s.cost_bytes for s in stats if s.resident),
            total_bytes=snapshot.total_bytes,
            available_bytes=snapshot.available_bytes,
            swap_percent=round(snapshot.swap_percent, 1),
            pressure=snapshot.level,
        ),
        cache_size=manager.settings.defaults.cache_size,
        models=manager.admin_rows(stats),
        requests=RequestActivity(runner.requests_total, runner.requests_failed, runner.running),
        history=History(BUCKET_SECONDS, metrics.history.snapshot()),
        errors=metrics.errors.snapshot()[::-1],
    )
