"""``POST /v1/embeddings``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from mlx_router.api.deps import RunnerDep
from mlx_router.api.disconnect import unless_disconnected
from mlx_router.api.errors import error_responses
from mlx_router.api.serving.embeddings import create_embeddings, prepare_embeddings
from mlx_router.protocol.embeddings import CreateEmbeddingRequest, CreateEmbeddingResponse

__all__ = ["router"]

router = APIRouter(tags=["Embeddings"])


@router.post(
    "/v1/embeddings",
    response_model=CreateEmbeddingResponse,
    responses=error_responses(400, 401, 404, 413, 429, 500, 503, 504, 507),
    summary="Create embeddings of texts or token ids",
)
async def create_embedding(body: CreateEmbeddingRequest, runner: RunnerDep, request: Request) -> Response:
    job = prepare_embeddings(runner, body)
    result = await unless_disconnected(request, create_embeddings(runner, job))
    # Serialized once, in pydantic's Rust serializer: thousands of vectors of floats are cheap.
    return Response(result.model_dump_json(), media_type="application/json")
