"""``POST /v1/completions`` (legacy text completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from mlx_router.api.deps import ServiceDep
from mlx_router.api.disconnect import unless_disconnected
from mlx_router.api.sse import stream_response
from mlx_router.protocol.completions import CompletionRequest, CompletionResponse

__all__ = ["router"]

router = APIRouter(tags=["Completions"])


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    summary="Create a text completion from a raw prompt (streaming with stream: true)",
)
async def create_completion(
    body: CompletionRequest, service: ServiceDep, request: Request, response: Response
) -> CompletionResponse | StreamingResponse:
    job = service.prepare_completion(body)
    if not job.stream:
        result = await unless_disconnected(request, service.completion_response(job))
        response.headers.update(job.headers())
        return result
    return stream_response(await service.completion_stream(job), job.stream_format)
