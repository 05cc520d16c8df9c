"""``GET /v1/models`` shapes, with the old project's memory fields as extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mlx_router.protocol.common import OpenAIResponse

__all__ = ["GroupRank", "MemoryRequirements", "MemoryStatus", "ModelCard", "ModelGroup", "ModelList", "ModelParameters"]


class _FromAttributes(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class MemoryRequirements(_FromAttributes):
    required_gb: float = Field(description="Configured required_memory_gb, else the measured weights in GB.")
    weight_bytes: int = Field(description="Weight files on disk, or MLX's active memory once loaded.")
    measured_from: Literal["mlx_active_memory", "weight_files"]
    can_load_now: bool = Field(description="Loaded, or its required memory fits in available memory × safety_margin.")
    load_status_reason: str


class ModelParameters(_FromAttributes):
    max_tokens: int = Field(description="Default max_tokens of a request that names none.")
    chat_template: str = Field(description="'auto' (the tokenizer's own) or a named template.")
    context_length: int | None = Field(description="Configured, or the model's own once loaded.")


class GroupRank(_FromAttributes):
    rank: int
    host: str = Field(description="The host entry the rank was started for (distributed.hosts).")
    hostname: str = Field(description="The machine's own name, as the rank sees it.")
    pid: int
    weight_gb: float = Field(description="The rank's share of the weights (MLX active memory after loading).")
    backend: str = Field(description="cpu or gpu.")


class ModelGroup(_FromAttributes):
    backend: str = Field(description="MLX distributed backend: ring, jaccl, mpi or nccl.")
    strategy: str = Field(description="pipeline or tensor.")
    hosts: list[str] = Field(description="One rank per entry, rank 0 first.")
    ranks: list[GroupRank] = Field(description="Each rank once the group is loaded (empty before).")


class ModelCard(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlx-router"
    state: str
    failure_reason: str | None = None
    capabilities: list[Literal["chat", "completions", "embeddings", "vision", "tools"]] = Field(
        default_factory=list, description="What the model serves: chat, completions, embeddings, vision, tools."
    )
    distributed: ModelGroup | None = Field(
        None, description="For a model served by a group of ranks (models.<id>.distributed): how and where."
    )
    memory_requirements: MemoryRequirements
    parameters: ModelParameters
    aliases: list[str] = Field(
        default_factory=list, description="Alias names and glob patterns (config.json 'aliases') that resolve to this model."
    )
    alias_of: str | None = Field(
        None, description="For an alias listed as a model of its own: the served model it stands for."
    )


class MemoryStatus(_FromAttributes):
    available_gb: float = Field(description="Memory available now (the system's; NVIDIA's own is in /v1/health).")
    pressure: Literal["normal", "moderate", "high", "critical"]


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    memory_status: MemoryStatus
