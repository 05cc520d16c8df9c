"""The FastAPI application factory.

No module-level app or settings: :func:`create_app` builds everything from a
:class:`~mlx_router.config.Settings`, and tests pass their own manager.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Route

from mlx_router import __version__
from mlx_router.api.errors import install_error_handlers
from mlx_router.api.middleware import LOOPBACK_HOSTS, RouterMiddleware, is_loopback
from mlx_router.api.reload import ConfigReloader
from mlx_router.api.routes import (
    admin,
    chat,
    completions,
    embeddings,
    health,
    messages,
    metrics,
    models,
    responses,
    status,
)
from mlx_router.api.serving.runner import Runner
from mlx_router.config.settings import Settings
from mlx_router.manager.manager import MLXModelManager
from mlx_router.metrics.context import note_model
from mlx_router.metrics.registry import RouterMetrics
from mlx_router.store.responses import ResponseStore

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _allowed_hosts(settings: Settings) -> list[str] | None:
    """Explicit list, else loopback names when bound to loopback (DNS-rebinding guard), else any."""
    if settings.server.allowed_hosts:
        return settings.server.allowed_hosts
    if is_loopback(settings.server.ip):
        return list(LOOPBACK_HOSTS)
    return None


def create_app(
    settings: Settings,
    *,
    manager: MLXModelManager | None = None,
    reload_settings: Callable[[], Settings] | None = None,
) -> FastAPI:
    """Build the app; the lifespan starts the manager (registry, embedded model, preload).

    ``reload_settings`` re-reads the configuration the server was started with (file,
    environment, flags): given, SIGHUP and ``POST /v1/admin/reload`` apply it."""
    manager = manager or MLXModelManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        on_sighup = reloader.install_signal()
        try:
            yield
        finally:
            if on_sighup:
                reloader.remove_signal()
            await manager.close()
            app.state.response_store.close()

    app = FastAPI(
        title="mlx-router",
        version=__version__,
        description="OpenAI-compatible server that routes requests to many MLX models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.metrics = RouterMetrics(manager, settings)
    runner = Runner(manager, settings, app.state.metrics)
    app.state.runner = runner
    app.state.response_store = ResponseStore(
        Path(settings.server.responses_store_path).expanduser(),
        max_responses=settings.server.responses_store_max,
        max_age_seconds=settings.server.responses_store_max_age_hours * 3600,
    )
    manager.on_resolved.append(note_model)  # the request's metrics are labelled with the served id

    def apply_settings(new: Settings) -> None:
        app.state.settings = new
        runner.settings = new

    reloader = ConfigReloader(reload_settings, manager, [apply_settings])
    app.state.reloader = reloader
    install_error_handlers(app)
    routers = [
        module.router
        for module in (chat, completions, embeddings, messages, responses, models, health, admin, metrics, status)
    ]
    for router in routers:
        app.include_router(router)
    app.add_middleware(
        RouterMiddleware,
        api_key=settings.resolve_api_key(),
        allowed_hosts=_allowed_hosts(settings),
        max_request_bytes=settings.server.max_request_bytes,
        metrics=app.state.metrics,
        metrics_public=settings.server.metrics_public,
        drain=runner.drain_state,
        routes=[route for router in routers for route in router.routes]
        + [route for route in app.router.routes if isinstance(route, Route)],  # /docs, /openapi.json
    )
    # Added last, so outermost: CORS preflights are answered before the API-key check.
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version", "anthropic-beta"],
        )
    return app
