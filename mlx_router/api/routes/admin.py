"""Admin API: load, unload, pin and unpin models; list their states; reload the configuration
(API key required when set)."""

from __future__ import annotations

from fastapi import APIRouter

from mlx_router.api.deps import ManagerDep, ReloaderDep
from mlx_router.api.reload import ReloadReport
from mlx_router.manager.manager import MLXModelManager
from mlx_router.manager.reports import AdminModelList, AdminModelRow

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["Admin"])


@router.get("/models", summary="Every model with state, memory, last use and requests in flight")
async def list_models(manager: ManagerDep) -> AdminModelList:
    return manager.admin_list()


def _one(manager: MLXModelManager, model_id: str) -> AdminModelRow:
    served = manager.resolve(model_id).id  # an alias names its model's row
    return next(row for row in manager.admin_rows() if row.id == served)


@router.post("/models/{model_id:path}/load", summary="Load a model now")
async def load(model_id: str, manager: ManagerDep) -> AdminModelRow:
    await manager.load(model_id)
    return _one(manager, model_id)


@router.post("/models/{model_id:path}/unload", summary="Unload an idle, unpinned model")
async def unload(model_id: str, manager: ManagerDep) -> AdminModelRow:
    await manager.unload_idle_model(model_id)
    return _one(manager, model_id)


@router.post("/models/{model_id:path}/pin", summary="Never evict this model")
async def pin(model_id: str, manager: ManagerDep) -> AdminModelRow:
    manager.set_pinned(model_id, True)
    return _one(manager, model_id)


@router.post("/models/{model_id:path}/unpin", summary="Let this model be evicted again")
async def unpin(model_id: str, manager: ManagerDep) -> AdminModelRow:
    manager.set_pinned(model_id, False)
    return _one(manager, model_id)


@router.post("/reload", summary="Re-read the configuration file (as SIGHUP does); 400 with the reason if it is invalid")
async def reload(reloader: ReloaderDep) -> ReloadReport:
    return await reloader.reload()
