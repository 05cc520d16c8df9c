"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from mlx_router.api.deps import ServiceDep
from mlx_router.api.disconnect import unless_disconnected
from mlx_router.api.sse import stream_response
from mlx_router.protocol.chat import ChatCompletionRequest, ChatCompletionResponse

__all__ = ["router"]

router = APIRouter(tags=["Chat"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    summary="Create a chat completion (streaming with stream: true)",
)
async def create_chat_completion(
    body: ChatCompletionRequest, service: ServiceDep, request: Request
) -> ChatCompletionResponse | StreamingResponse:
    job = service.prepare_chat(body)
    if not job.stream:
        return await unless_disconnected(request, service.chat_response(job))
    return stream_response(await service.chat_stream(job), job.stream_format)
