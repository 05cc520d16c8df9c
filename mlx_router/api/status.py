"""What the status page shows, as one JSON object (``GET /v1/status``)."""

from __future__ import annotations

import time
from typing import Any

from mlx_router import __version__
from mlx_router.api.serving.runner import Runner
from mlx_router.manager.manager import MLXModelManager
from mlx_router.metrics.history import BUCKET_SECONDS
from mlx_router.metrics.registry import RouterMetrics

__all__ = ["status_report"]


def status_report(manager: MLXModelManager, runner: Runner, metrics: RouterMetrics) -> dict[str, Any]:
    """Models and their states, memory against the budget, pressure, request and token counts
    per 10 seconds, and the recent errors (newest first)."""
    ready, reason = (False, "the server is shutting down") if runner.draining else manager.is_ready()
    snapshot = manager.monitor.snapshot()
    stats = manager.model_stats()  # reads each model's config once per poll
    models = manager.admin_status(stats)
    resident = sum(s.cost_bytes for s in stats if s.resident)
    return {
        "version": __version__,
        "status": "ok" if ready else "unavailable",
        "reason": None if ready else reason,
        "time": round(time.time(), 3),
        "uptime_seconds": round(time.time() - manager.started_at, 1),
        "memory": {
            "budget_bytes": manager.budget_bytes,
            "resident_bytes": resident,
            "total_bytes": snapshot.total_bytes,
            "available_bytes": snapshot.available_bytes,
            "swap_percent": round(snapshot.swap_percent, 1),
            "pressure": snapshot.level,
        },
        "cache_size": manager.settings.defaults.cache_size,
        "models": models,
        "requests": {"total": runner.requests_total, "failed": runner.requests_failed, "running": runner.running},
        "history": {"bucket_seconds": BUCKET_SECONDS, "buckets": metrics.history.snapshot()},
        "errors": metrics.errors.snapshot()[::-1],
    }
