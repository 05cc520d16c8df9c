"""What the manager reports, as typed values: the routes return these (FastAPI serializes
dataclasses and documents them in the OpenAPI schema); nothing is a dict splatted into a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mlx_router.engine.types import WorkerMemory

__all__ = [
    "AdminModelList",
    "AdminModelRow",
    "GroupReport",
    "HealthReport",
    "LoadedModelReport",
    "MemoryRequirements",
    "ModelInfo",
    "ModelParameters",
    "ModelStats",
    "RankReport",
    "Readiness",
    "RequestCounts",
]


@dataclass(frozen=True)
class Readiness:
    """Whether the server can serve requests (``GET /health``), and why not."""

    status: Literal["ok", "unavailable"]
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class MemoryRequirements:
    """The earlier project's ``memory_requirements`` of a model card."""

    required_gb: float
    weight_bytes: int
    measured_from: Literal["mlx_active_memory", "weight_files"]
    can_load_now: bool
    load_status_reason: str


@dataclass(frozen=True)
class ModelParameters:
    max_tokens: int
    chat_template: str
    context_length: int | None


@dataclass(frozen=True)
class RankReport:
    """One rank of a model served by a group, as it reported itself once loaded."""

    rank: int
    host: str
    """The host entry it was started for (``distributed.hosts``)."""
    hostname: str
    pid: int
    weight_gb: float
    """Its share of the weights (MLX active memory after loading)."""
    backend: str


@dataclass(frozen=True)
class GroupReport:
    """A model served by a group of ranks: how, where, and (once loaded) each rank."""

    backend: str
    strategy: str
    hosts: list[str]
    ranks: list[RankReport]


@dataclass(frozen=True)
class ModelInfo:
    """A model's state and memory, for ``GET /v1/models``."""

    state: str
    failure_reason: str | None
    capabilities: list[str]
    """What the model serves: chat, completions, embeddings, vision, tools."""
    memory_requirements: MemoryRequirements
    parameters: ModelParameters
    distributed: GroupReport | None = None


@dataclass(frozen=True)
class ModelStats:
    """One model's state as numbers (for metrics and the status page)."""

    id: str
    state: str
    pinned: bool
    resident: bool
    in_flight: int
    """Requests holding the model."""
    sequences: int
    """Sequences running or waiting, loading included."""
    queued: int
    """Sequences waiting: for the model to load or take its turn, or in the worker beyond its batch."""
    weight_bytes: int
    cost_bytes: int
    mlx_memory: WorkerMemory | None = None
    """MLX's memory in the model's worker as last reported (resident models of one process)."""


@dataclass(frozen=True)
class AdminModelRow:
    """One row of ``GET /v1/admin/models`` and of the status page."""

    id: str
    state: str
    failure_reason: str | None
    pinned: bool
    in_flight: int
    sequences: int
    queued: int
    idle_seconds: float | None
    cost_gb: float
    weight_gb: float
    mlx_active_gb: float | None
    """MLX's active memory in the worker now (weights, KV caches, prefix cache); None when not
    resident or served by a group."""
    mlx_peak_gb: float | None
    """The most MLX's active memory has been in the worker since it started."""
    keep_alive: float
    pid: int | None
    retiring: bool
    served: bool
    distributed: GroupReport | None = None


@dataclass(frozen=True)
class AdminModelList:
    data: list[AdminModelRow]
    memory_budget_gb: float
    cache_size: int | None
    object: Literal["list"] = "list"


@dataclass(frozen=True)
class LoadedModelReport:
    id: str
    in_flight: int
    sequences: int
    pid: int | None
    weight_gb: float
    backend: str
    pinned: bool
    default: bool
    warming: bool = False
    """Its worker is still preparing prefill widths in idle time (``defaults.prefill_buckets``)."""


@dataclass(frozen=True)
class RequestCounts:
    total: int
    failed: int


@dataclass(frozen=True)
class HealthReport:
    """``GET /v1/health``: readiness, memory, pressure, loaded models, uptime and counts."""

    status: Literal["ok", "unavailable"]
    reason: str | None
    version: str
    uptime_seconds: float
    requests: RequestCounts
    memory: dict[str, object]
    pressure: str
    loaded_models: list[LoadedModelReport]
    current_model: str | None
    models: dict[str, str] = field(default_factory=dict)
    spare_worker_pid: int | None = None
    loads: int = 0
    worker_restarts: int = 0
