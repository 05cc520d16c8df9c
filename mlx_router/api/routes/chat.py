"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from mlx_router.api.deps import RunnerDep
from mlx_router.api.disconnect import unless_disconnected
from mlx_router.api.errors import error_responses
from mlx_router.api.serving.chat import chat_response, chat_stream, prepare_chat
from mlx_router.api.sse import stream_response
from mlx_router.api.vision import warnings_header
from mlx_router.protocol.chat import ChatCompletionRequest, ChatCompletionResponse

__all__ = ["router"]

router = APIRouter(tags=["Chat"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=error_responses(400, 401, 404, 413, 429, 500, 503, 504, 507),
    summary="Create a chat completion (streaming with stream: true)",
)
async def create_chat_completion(
    body: ChatCompletionRequest, runner: RunnerDep, request: Request, response: Response
) -> ChatCompletionResponse | StreamingResponse:
    chat = await prepare_chat(runner, body)
    headers = warnings_header(chat.warnings)
    if not chat.job.stream:
        result = await unless_disconnected(request, chat_response(runner, chat))
        response.headers.update(headers | chat.job.headers())
        return result
    stream = stream_response(await unless_disconnected(request, chat_stream(runner, chat)), chat.stream_format)
    stream.headers.update(headers)
    return stream
