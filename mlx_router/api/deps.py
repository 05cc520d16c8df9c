"""Typed dependencies taken from ``app.state``, so tests can swap them."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from mlx_router.api.reload import ConfigReloader
from mlx_router.api.serving.runner import Runner
from mlx_router.config.settings import Settings
from mlx_router.manager.manager import MLXModelManager
from mlx_router.metrics.registry import RouterMetrics

__all__ = ["ManagerDep", "MetricsDep", "ReloaderDep", "RunnerDep", "SettingsDep"]


def _manager(request: Request) -> MLXModelManager:
    return cast(MLXModelManager, request.app.state.manager)  # Starlette's app.state holds untyped values


def _settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)  # Starlette's app.state holds untyped values


def _runner(request: Request) -> Runner:
    return cast(Runner, request.app.state.runner)  # Starlette's app.state holds untyped values


def _metrics(request: Request) -> RouterMetrics:
    return cast(RouterMetrics, request.app.state.metrics)  # Starlette's app.state holds untyped values


def _reloader(request: Request) -> ConfigReloader:
    return cast(ConfigReloader, request.app.state.reloader)  # Starlette's app.state holds untyped values


ManagerDep = Annotated[MLXModelManager, Depends(_manager)]
MetricsDep = Annotated[RouterMetrics, Depends(_metrics)]
ReloaderDep = Annotated[ConfigReloader, Depends(_reloader)]
SettingsDep = Annotated[Settings, Depends(_settings)]
RunnerDep = Annotated[Runner, Depends(_runner)]
