"""Typed dependencies taken from ``app.state``, so tests can swap them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mlx_router.api.generation import GenerationService
from mlx_router.config.settings import Settings
from mlx_router.manager.manager import MLXModelManager

__all__ = ["ManagerDep", "ServiceDep", "SettingsDep"]


def _manager(request: Request) -> MLXModelManager:
    return request.app.state.manager  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _service(request: Request) -> GenerationService:
    return request.app.state.generation  # type: ignore[no-any-return]


ManagerDep = Annotated[MLXModelManager, Depends(_manager)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[GenerationService, Depends(_service)]
