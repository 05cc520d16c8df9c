"""``POST /v1/completions`` (legacy text completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from mlx_router.api.deps import RunnerDep
from mlx_router.api.disconnect import unless_disconnected
from mlx_router.api.errors import error_responses
from mlx_router.api.serving.completions import completion_response, completion_stream, prepare_completion
from mlx_router.api.sse import stream_response
from mlx_router.protocol.completions import CompletionRequest, CompletionResponse

__all__ = ["router"]

router = APIRouter(tags=["Completions"])


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses=error_responses(400, 401, 404, 413, 429, 500, 503, 504, 507),
    summary="Create a text completion from a raw prompt (streaming with stream: true)",
)
async def create_completion(
    body: CompletionRequest, runner: RunnerDep, request: Request, response: Response
) -> CompletionResponse | StreamingResponse:
    completion = prepare_completion(runner, body)
    if not completion.job.stream:
        result = await unless_disconnected(request, completion_response(runner, completion))
        response.headers.update(completion.job.headers())
        return result
    return stream_response(
        await unless_disconnected(request, completion_stream(runner, completion)), completion.stream_format
    )
