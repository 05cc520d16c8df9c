"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` (Anthropic Messages API).

Clients add ``?beta=true`` (Claude Code does); the query string changes nothing here. Errors on
these routes use Anthropic's envelope (see :mod:`mlx_router.api.errors`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from mlx_router.api.deps import RunnerDep
from mlx_router.api.errors import anthropic_error_responses
from mlx_router.api.serving import messages
from mlx_router.protocol.anthropic import CountTokensRequest, MessagesRequest

__all__ = ["router"]

router = APIRouter(tags=["Anthropic Messages"])


@router.post(
    "/v1/messages",
    response_model=None,
    responses=anthropic_error_responses(400, 401, 404, 413, 429, 500, 503, 504, 507),
    summary="Create a message (Anthropic Messages API; streaming with stream: true)",
)
async def create_message(body: MessagesRequest, runner: RunnerDep, request: Request) -> JSONResponse | StreamingResponse:
    return await messages.create_message(runner, body, request)


@router.post(
    "/v1/messages/count_tokens",
    response_model=None,
    responses=anthropic_error_responses(400, 401, 404, 413, 429, 500, 503, 504, 507),
    summary="Count the tokens of a message request's prompt",
)
async def count_tokens(body: CountTokensRequest, runner: RunnerDep) -> JSONResponse:
    return await messages.count_tokens(runner, body)
