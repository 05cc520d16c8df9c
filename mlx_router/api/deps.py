"""Typed dependencies taken from ``app.state``, so tests can swap them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mlx_router.api.generation import GenerationService
from mlx_router.api.reload import ConfigReloader
from mlx_router.api.serving.embeddings import EmbeddingService
from mlx_router.config.settings import Settings
from mlx_router.manager.manager import MLXModelManager
from mlx_router.metrics.registry import RouterMetrics

__all__ = ["EmbeddingServiceDep", "ManagerDep", "MetricsDep", "ReloaderDep", "ServiceDep", "SettingsDep"]


def _manager(request: Request) -> MLXModelManager:
    return request.app.state.manager  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _service(request: Request) -> GenerationService:
    return request.app.state.generation  # type: ignore[no-any-return]


def _embeddings(request: Request) -> EmbeddingService:
    return request.app.state.embeddings  # type: ignore[no-any-return]


def _metrics(request: Request) -> RouterMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def _reloader(request: Request) -> ConfigReloader:
    return request.app.state.reloader  # type: ignore[no-any-return]


ManagerDep = Annotated[MLXModelManager, Depends(_manager)]
MetricsDep = Annotated[RouterMetrics, Depends(_metrics)]
ReloaderDep = Annotated[ConfigReloader, Depends(_reloader)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[GenerationService, Depends(_service)]
EmbeddingServiceDep = Annotated[EmbeddingService, Depends(_embeddings)]
