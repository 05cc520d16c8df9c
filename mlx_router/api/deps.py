"""Typed dependencies taken from ``app.state``, so tests can swap them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mlx_router.api.reload import ConfigReloader
from mlx_router.api.serving.runner import Runner
from mlx_router.config.settings import Settings
from mlx_router.manager.manager import MLXModelManager
from mlx_router.metrics.registry import RouterMetrics

__all__ = ["ManagerDep", "MetricsDep", "ReloaderDep", "RunnerDep", "SettingsDep"]


def _manager(request: Request) -> MLXModelManager:
    return request.app.state.manager  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _runner(request: Request) -> Runner:
    return request.app.state.runner  # type: ignore[no-any-return]


def _metrics(request: Request) -> RouterMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def _reloader(request: Request) -> ConfigReloader:
    return request.app.state.reloader  # type: ignore[no-any-return]


ManagerDep = Annotated[MLXModelManager, Depends(_manager)]
MetricsDep = Annotated[RouterMetrics, Depends(_metrics)]
ReloaderDep = Annotated[ConfigReloader, Depends(_reloader)]
SettingsDep = Annotated[Settings, Depends(_settings)]
RunnerDep = Annotated[Runner, Depends(_runner)]
