"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

from fastapi import APIRouter

from mlx_router.api.deps import ManagerDep
from mlx_router.manager.manager import MLXModelManager
from mlx_router.manager.memory import MemorySnapshot
from mlx_router.manager.registry import ModelEntry
from mlx_router.protocol.models import ModelCard, ModelList

__all__ = ["router"]

router = APIRouter(tags=["Models"])


def _card(manager: MLXModelManager, entry: ModelEntry, snapshot: MemorySnapshot | None = None) -> ModelCard:
    created = int(entry.path.stat().st_mtime) if entry.path.exists() else 0
    return ModelCard(id=entry.id, created=created, **manager.model_info(entry, snapshot))


@router.get("/v1/models", response_model=ModelList, summary="List models with their memory requirements")
async def list_models(manager: ManagerDep) -> ModelList:
    manager.refresh_listing()
    snapshot = manager.monitor.snapshot()
    return ModelList(
        data=[_card(manager, entry, snapshot) for _, entry in sorted(manager.entries.items())],
        memory_status={"available_gb": round(snapshot.available_bytes / 1024**3, 2), "pressure": snapshot.level},
    )


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, summary="Describe one model")
async def get_model(model_id: str, manager: ManagerDep) -> ModelCard:
    return _card(manager, manager.resolve(model_id))
