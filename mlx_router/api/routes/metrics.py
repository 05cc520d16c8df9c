"""``GET /metrics``: Prometheus text format, or OpenMetrics on request (the API key applies
unless ``server.metrics_public``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mlx_router.api.deps import MetricsDep

__all__ = ["router"]

router = APIRouter(tags=["Metrics"])


@router.get("/metrics", summary="Prometheus metrics: requests, errors, latencies, tokens, models, memory")
async def metrics(metrics: MetricsDep, request: Request) -> Response:
    body, content_type = metrics.exposition(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
