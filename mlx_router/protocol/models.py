"""``GET /v1/models`` shapes, with the old project's memory fields as extensions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mlx_router.protocol.common import OpenAIResponse

__all__ = ["ModelCard", "ModelList"]


class ModelCard(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlx-router"
    state: str
    failure_reason: str | None = None
    memory_requirements: dict[str, Any]
    parameters: dict[str, Any]
    aliases: list[str] = Field(
        default_factory=list, description="Alias names and glob patterns (config.json 'aliases') that resolve to this model."
    )
    alias_of: str | None = Field(
        None, description="For an alias listed as a model of its own: the served model it stands for."
    )


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    memory_status: dict[str, Any]
