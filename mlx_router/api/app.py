"""The FastAPI application factory.

No module-level app or settings: :func:`create_app` builds everything from a
:class:`~mlx_router.config.Settings`, and tests pass their own manager.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from mlx_router import __version__
from mlx_router.api.errors import install_error_handlers
from mlx_router.api.generation import GenerationService
from mlx_router.api.middleware import LOOPBACK_HOSTS, RouterMiddleware, is_loopback
from mlx_router.api.routes import admin, chat, completions, health, models
from mlx_router.config.settings import Settings
from mlx_router.manager.manager import MLXModelManager

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _allowed_hosts(settings: Settings) -> list[str] | None:
    """Explicit list, else loopback names when bound to loopback (DNS-rebinding guard), else any."""
    if settings.server.allowed_hosts:
        return settings.server.allowed_hosts
    if is_loopback(settings.server.ip):
        return list(LOOPBACK_HOSTS)
    return None


def create_app(settings: Settings, *, manager: MLXModelManager | None = None) -> FastAPI:
    """Build the app; the lifespan starts the manager (registry, embedded model, preload)."""
    manager = manager or MLXModelManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(
        title="mlx-router",
        version=__version__,
        description="OpenAI-compatible server that routes requests to many MLX models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.generation = GenerationService(manager, settings)
    install_error_handlers(app)
    for module in (chat, completions, models, health, admin):
        app.include_router(module.router)
    app.add_middleware(
        RouterMiddleware,
        api_key=settings.resolve_api_key(),
        allowed_hosts=_allowed_hosts(settings),
        max_request_bytes=settings.server.max_request_bytes,
    )
    # Added last, so outermost: CORS preflights are answered before the API-key check.
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
