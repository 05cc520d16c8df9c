"""``POST /v1/embeddings``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from mlx_router.api.deps import EmbeddingServiceDep
from mlx_router.api.disconnect import unless_disconnected
from mlx_router.protocol.embeddings import CreateEmbeddingRequest, CreateEmbeddingResponse

__all__ = ["router"]

router = APIRouter(tags=["Embeddings"])


@router.post(
    "/v1/embeddings",
    response_model=CreateEmbeddingResponse,
    summary="Create embeddings of texts or token ids",
)
async def create_embeddings(body: CreateEmbeddingRequest, service: EmbeddingServiceDep, request: Request) -> Response:
    job = service.prepare(body)
    result = await unless_disconnected(request, service.create(job))
    # Serialized once, in pydantic's Rust serializer: thousands of vectors of floats are cheap.
    return Response(result.model_dump_json(), media_type="application/json")
