"""``GET /v1/models`` shapes, with the old project's memory fields as extensions."""

from __future__ import annotations

from typing import Any, Literal

from mlx_router.protocol.common import OpenAIResponse

__all__ = ["ModelCard", "ModelList"]


class ModelCard(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlx-router"
    state: str
    failure_reason: str | None = None
    distributed: dict[str, Any] | None = None
    """For a model served by a group of ranks: backend, strategy, hosts, and each rank (host,
    pid, memory) once loaded."""
    memory_requirements: dict[str, Any]
    parameters: dict[str, Any]


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    memory_status: dict[str, Any]
