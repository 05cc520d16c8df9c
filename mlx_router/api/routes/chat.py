"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from mlx_router.api.deps import ServiceDep
from mlx_router.api.disconnect import unless_disconnected
from mlx_router.api.sse import stream_response
from mlx_router.api.vision import attach_images, warnings_header
from mlx_router.protocol.chat import ChatCompletionRequest, ChatCompletionResponse

__all__ = ["router"]

router = APIRouter(tags=["Chat"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    summary="Create a chat completion (streaming with stream: true)",
)
async def create_chat_completion(
    body: ChatCompletionRequest, service: ServiceDep, request: Request, response: Response
) -> ChatCompletionResponse | StreamingResponse:
    job = service.prepare_chat(body)
    headers = warnings_header(await attach_images(job, body, service.settings))
    if not job.stream:
        result = await unless_disconnected(request, service.chat_response(job))
        response.headers.update(headers | job.headers())
        return result
    stream = stream_response(await service.chat_stream(job), job.stream_format)
    stream.headers.update(headers)
    return stream
