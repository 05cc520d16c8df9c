"""The model manager: which models exist, which are resident, and memory pressure."""

from mlx_router.manager.manager import LoadedModel, MLXModelManager, ModelState
from mlx_router.manager.memory import MemorySnapshot, ResourceMonitor
from mlx_router.manager.model_settings import ResolvedModelSettings, resolve_model_settings
from mlx_router.manager.registry import ModelEntry, discover_models

__all__ = [
    "LoadedModel",
    "MLXModelManager",
    "MemorySnapshot",
    "ModelEntry",
    "ModelState",
    "ResolvedModelSettings",
    "ResourceMonitor",
    "discover_models",
    "resolve_model_settings",
]
