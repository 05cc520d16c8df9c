"""``POST /v1/embeddings`` wire types (OpenAI's ``CreateEmbeddingRequest`` / ``Response``)."""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import Field

from mlx_router.protocol.common import OpenAIRequest, OpenAIResponse

__all__ = ["CreateEmbeddingRequest", "CreateEmbeddingResponse", "Embedding", "EmbeddingUsage"]

Texts = Annotated[list[str], Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CreateEmbeddingRequest(OpenAIRequest):
    """Fields in the order of OpenAI's reference."""

    input: str | Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)] = Field(
        description="A text, texts, token ids, or lists of token ids (ids of this model's own tokenizer). "
        "Each becomes one embedding."
    )
    model: str = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="'base64': each embedding as the base64 of its little-endian float32 values."
    )
    dimensions: int | None = Field(
        None, ge=1, le=65536, description="Keep this many values (renormalized), for models trained for it."
    )
    user: str | None = Field(None, max_length=256, description="Accepted for compatibility; not used.")

    def inputs(self) -> list[str | list[int]]:
        """One entry per embedding to return, in order."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [value]
        return cast(list[str | list[int]], list(value))  # a list of strings or of token-id lists


class Embedding(OpenAIResponse):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    """Floats, or a base64 string for ``encoding_format: base64``."""
    index: int


class EmbeddingUsage(OpenAIResponse):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
