"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from mlx_router.api.deps import ServiceDep, SettingsDep
from mlx_router.api.sse import MEDIA_TYPES, write_stream
from mlx_router.protocol.chat import ChatCompletionRequest, ChatCompletionResponse

__all__ = ["router"]

router = APIRouter(tags=["Chat"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    summary="Create a chat completion (streaming with stream: true)",
)
async def create_chat_completion(
    body: ChatCompletionRequest, service: ServiceDep, settings: SettingsDep
) -> ChatCompletionResponse | StreamingResponse:
    prepared = service.prepare(body)
    if not prepared.stream:
        return await service.complete(prepared)
    chunks = await service.stream(prepared)
    fmt = body.streaming_format or settings.defaults.streaming_format
    return StreamingResponse(
        write_stream(chunks, fmt),
        media_type=MEDIA_TYPES[fmt],
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
