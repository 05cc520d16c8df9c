"""The FastAPI application factory.

No module-level app or settings: :func:`create_app` builds everything from a
:class:`~mlx_router.config.Settings`, and tests pass their own manager.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Route

from mlx_router import __version__
from mlx_router.api import routes, serving
from mlx_router.api.errors import install_error_handlers
from mlx_router.api.middleware import LOOPBACK_HOSTS, RouterMiddleware, is_loopback
from mlx_router.api.reload import ConfigReloader
from mlx_router.api.serving.runner import Runner
from mlx_router.config.settings import Settings
from mlx_router.manager.manager import MLXModelManager
from mlx_router.metrics.context import note_model
from mlx_router.metrics.registry import RouterMetrics
from mlx_router.store.responses import ResponseStore

__all__ = ["create_app", "endpoint_routers"]

logger = logging.getLogger(__name__)


def _allowed_hosts(settings: Settings) -> list[str] | None:
    """Explicit list, else loopback names when bound to loopback (DNS-rebinding guard), else any."""
    if settings.server.allowed_hosts:
        return settings.server.allowed_hosts
    if is_loopback(settings.server.ip):
        return list(LOOPBACK_HOSTS)
    return None


def endpoint_routers() -> list[APIRouter]:
    """The ``router`` of every module in ``api/routes`` and ``api/serving``, by module name.

    Found, not listed: an endpoint is added by its own modules alone (its serving module may
    define its ``router`` beside the job it prepares, or a thin module in ``routes/`` does)."""
    found: list[APIRouter] = []
    for package in (routes, serving):
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda module: module.name):
            router = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "router", None)
            if isinstance(router, APIRouter):
                found.append(router)
    return found


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
        settings.responses_store_file,
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
    routers = endpoint_routers()
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
