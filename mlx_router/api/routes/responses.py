"""``/v1/responses`` (OpenAI Responses API): create, count input tokens, retrieve, delete, list
input items."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from mlx_router.api.deps import RunnerDep
from mlx_router.api.errors import error_responses
from mlx_router.api.serving import responses
from mlx_router.protocol.responses import InputTokens, InputTokensRequest, ResponsesRequest
from mlx_router.store.responses import ResponseStore

__all__ = ["router"]

router = APIRouter(tags=["Responses"])


def _store(request: Request) -> ResponseStore:
    return cast(ResponseStore, request.app.state.response_store)  # Starlette's app.state holds untyped values


StoreDep = Annotated[ResponseStore, Depends(_store)]


@router.post(
    "/v1/responses",
    response_model=None,
    responses=error_responses(400, 401, 404, 413, 429, 500, 503, 504, 507),
    summary="Create a response (OpenAI Responses API; streaming with stream: true)",
)
async def create_response(
    body: ResponsesRequest, runner: RunnerDep, store: StoreDep, request: Request
) -> JSONResponse | StreamingResponse:
    return await responses.create_response(runner, store, body, request)


@router.post(
    "/v1/responses/input_tokens",
    response_model=InputTokens,
    responses=error_responses(400, 401, 404, 413, 429, 500, 503, 507),
    summary="Count the input tokens of a response request (tokenized by the model, nothing generated)",
)
async def count_input_tokens(body: InputTokensRequest, runner: RunnerDep, store: StoreDep) -> JSONResponse:
    return await responses.count_input_tokens(runner, store, body)


@router.get("/v1/responses/{response_id}", responses=error_responses(400, 401, 404), summary="Retrieve a stored response")
async def get_response(response_id: str, store: StoreDep) -> dict[str, Any]:
    return await responses.get_response(store, response_id)


@router.delete(
    "/v1/responses/{response_id}", responses=error_responses(400, 401, 404), summary="Delete a stored response"
)
async def delete_response(response_id: str, store: StoreDep) -> dict[str, Any]:
    return await responses.delete_response(store, response_id)


@router.get(
    "/v1/responses/{response_id}/input_items",
    responses=error_responses(400, 401, 404),
    summary="List a stored response's input items",
)
async def list_input_items(
    response_id: str,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    return await responses.list_input_items(store, response_id, limit=limit, order=order, after=after)
