"""``GET /health`` (readiness, open without a key) and ``GET /v1/health`` (details)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from mlx_router import __version__
from mlx_router.api.deps import ManagerDep, RunnerDep

__all__ = ["router"]

router = APIRouter(tags=["Health"])


@router.get("/health", summary="Readiness: 200 when requests can be served, 503 with the reason otherwise")
async def health(manager: ManagerDep, runner: RunnerDep) -> JSONResponse:
    ready, reason = (False, "the server is shutting down") if runner.draining else manager.is_ready()
    body = {"status": "ok" if ready else "unavailable", "reason": None if ready else reason}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/v1/health", summary="Memory, pressure, loaded models, uptime and request counts")
async def health_details(manager: ManagerDep, runner: RunnerDep) -> dict[str, Any]:
    ready, reason = manager.is_ready()
    return {
        "status": "ok" if ready else "unavailable",
        "reason": None if ready else reason,
        "version": __version__,
        "uptime_seconds": round(time.time() - manager.started_at, 1),
        "requests": {"total": runner.requests_total, "failed": runner.requests_failed},
        **manager.health(),
    }
