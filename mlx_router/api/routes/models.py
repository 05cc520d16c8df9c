"""``GET /v1/models`` and ``GET /v1/models/{id}``.

Exact aliases (``aliases`` in config.json) are listed as models of their own with ``alias_of``
naming the served model, so clients that pick from the list find them; every model's card names
the aliases and patterns that resolve to it in ``aliases``."""

from __future__ import annotations

from fastapi import APIRouter

from mlx_router.api.deps import ManagerDep
from mlx_router.api.errors import error_responses
from mlx_router.manager.manager import MLXModelManager
from mlx_router.manager.memory import MemorySnapshot
from mlx_router.manager.registry import ModelEntry
from mlx_router.protocol.models import (
    MemoryRequirements,
    MemoryStatus,
    ModelCard,
    ModelGroup,
    ModelList,
    ModelParameters,
)

__all__ = ["router"]

router = APIRouter(tags=["Models"])


def _card(manager: MLXModelManager, entry: ModelEntry, snapshot: MemorySnapshot | None = None, *, name: str | None = None) -> ModelCard:
    """The card of a served model, or of an alias of it (``name``)."""
    info = manager.model_info(entry, snapshot)
    alias = name is not None and name != entry.id
    return ModelCard(
        id=name if name is not None and alias else entry.id,
        created=int(entry.path.stat().st_mtime) if entry.path.exists() else 0,
        state=info.state,
        failure_reason=info.failure_reason,
        capabilities=info.capabilities,
        distributed=ModelGroup.model_validate(info.distributed) if info.distributed else None,
        memory_requirements=MemoryRequirements.model_validate(info.memory_requirements),
        parameters=ModelParameters.model_validate(info.parameters),
        aliases=[] if alias else manager.aliases.names_for(entry.id),
        alias_of=entry.id if alias else None,
    )


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=error_responses(401),
    summary="List models (and exact aliases) with their memory requirements",
)
async def list_models(manager: ManagerDep) -> ModelList:
    manager.refresh_listing()
    snapshot = manager.monitor.snapshot()
    cards = [_card(manager, entry, snapshot) for _, entry in sorted(manager.entries.items())]
    cards += [
        _card(manager, manager.entries[target], snapshot, name=name)
        for name, target in sorted(manager.aliases.exact.items())
        if target in manager.entries and name not in manager.entries
    ]
    return ModelList(
        data=cards,
        memory_status=MemoryStatus(available_gb=round(snapshot.available_bytes / 1024**3, 2), pressure=snapshot.level),
    )


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses=error_responses(400, 401, 404),
    summary="Describe one model or alias",
)
async def get_model(model_id: str, manager: ManagerDep) -> ModelCard:
    return _card(manager, manager.resolve(model_id), name=model_id)
