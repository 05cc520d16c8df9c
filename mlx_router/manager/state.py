"""The small types the manager's parts share: a model's state and the events listeners get."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

__all__ = ["ManagerEvent", "ModelState"]


class ModelState(str, Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True)
class ManagerEvent:
    """Something that happened to a model, for listeners such as metrics."""

    kind: Literal["loaded", "load_failed", "evicted", "worker_exit", "retired", "cancelled"]
    """``retired``: a model that a configuration reload removed or changed has finished its
    requests and is unloaded."""
    model_id: str
    seconds: float = 0.0
    """Wall time of the load (``loaded``, ``load_failed``)."""
    reason: str = ""
    """``evicted``: ``room`` (made room for another model) or ``pressure`` (memory pressure)."""
    tokens: int = 0
    """``cancelled``: tokens the worker generated after the client went away."""
