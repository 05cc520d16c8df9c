"""``GET /health`` (readiness, open without a key) and ``GET /v1/health`` (details)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from mlx_router.api.deps import ManagerDep, RunnerDep
from mlx_router.manager.reports import HealthReport, Readiness, RequestCounts

__all__ = ["router"]

router = APIRouter(tags=["Health"])


@router.get(
    "/health",
    summary="Readiness: 200 when the server can serve requests, 503 with the reason otherwise",
    responses={503: {"model": Readiness, "description": "Starting, draining, or no model can be served"}},
)
async def health(manager: ManagerDep, runner: RunnerDep, response: Response) -> Readiness:
    readiness = manager.readiness(draining=runner.draining)
    response.status_code = 200 if readiness.ready else 503
    return readiness


@router.get("/v1/health", summary="Memory, pressure, loaded models, uptime and request counts")
async def health_details(manager: ManagerDep, runner: RunnerDep) -> HealthReport:
    return manager.health(RequestCounts(runner.requests_total, runner.requests_failed))
