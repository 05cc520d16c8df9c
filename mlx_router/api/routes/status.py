"""The status page (``GET /`` and ``GET /ui``) and the JSON it polls (``GET /v1/status``).

The page is one static HTML file shipped in the package, with its script and styles inline and
nothing loaded from elsewhere (the machine may be offline). It holds no data, so it is served
without the API key; its script sends the key (kept in the tab's sessionStorage) to
``/v1/status`` and the admin endpoints, which require it.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from mlx_router.api.deps import ManagerDep, MetricsDep, RunnerDep
from mlx_router.api.status import StatusReport, status_report

__all__ = ["router"]

router = APIRouter(tags=["Status"])

PAGE_HEADERS = {
    # Inline script and styles only; the page talks to this server alone and cannot be framed.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _page() -> str:
    return (files("mlx_router.api") / "static" / "status.html").read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
@router.get("/ui", include_in_schema=False)
async def status_page() -> HTMLResponse:
    return HTMLResponse(_page(), headers=PAGE_HEADERS)


@router.get("/v1/status", summary="What the status page shows: models, memory, pressure, activity, recent errors")
async def status(manager: ManagerDep, runner: RunnerDep, metrics: MetricsDep) -> StatusReport:
    return status_report(manager, runner, metrics)
