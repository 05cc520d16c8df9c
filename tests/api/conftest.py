"""Fixtures for API tests: the real app and manager over the scripted fake engine.

    async def test_x(make_app):
        harness = await make_app(script=FakeEngineScript(chunks=("a", "b")), defaults={"stream": True})
        response = await harness.client.post("/v1/chat/completions", json=chat_body())

``make_app`` builds ``Settings`` (model directory: the session's tiny models folder, which holds
``tiny-llama``; no embedded model; no log file) with the given overrides, an
``MLXModelManager`` whose workers are :class:`tests.fakes.FakeWorkerClient`, the app from
``create_app``, runs its lifespan, and returns an :class:`AppHarness` with two httpx clients:
``client`` (httpx's ASGITransport, whole responses) and ``stream_client``
(:class:`tests.fakes.StreamingASGITransport`: incremental bodies, closing early disconnects).
The lifespan is closed at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from mlx_router.api.app import create_app
from mlx_router.config.settings import Settings
from mlx_router.manager.manager import MLXModelManager
from tests.fakes import FakeClientFactory, FakeEngineScript, StreamingASGITransport, fake_client_factory

BASE_URL = "http://localhost"


@dataclass
class AppHarness:
    app: FastAPI
    settings: Settings
    manager: MLXModelManager
    factory: FakeClientFactory
    client: httpx.AsyncClient
    stream_client: httpx.AsyncClient
    lifespan_task: asyncio.Task[None] | None = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)


def build_settings(models_root: Path, **overrides: Any) -> Settings:
    """``Settings`` for tests; ``overrides`` are sections: ``defaults={...}, server={...}, models={...}``."""
    data: dict[str, Any] = {
        "defaults": {"model_directory": str(models_root), "embedded_model": False},
        "server": {"log_file": None},
        "models": {},
        "aliases": {},
    }
    for section, values in overrides.items():
        if section not in data:
            raise TypeError(f"unknown settings section {section!r}")
        data[section].update(values)
    return Settings.model_validate(data)


@pytest.fixture
async def make_app(tiny_models_root: Path) -> AsyncIterator[Callable[..., Awaitable[AppHarness]]]:
    """``await make_app(script=None, background_lifespan=False, headers=None, reload_settings=None, **sections)``.

    With ``background_lifespan=True`` the lifespan starts in a task and ``make_app`` returns at
    once (for tests that look at the server while the default model is still loading);
    ``harness.lifespan_task`` finishes when startup has. ``reload_settings`` (e.g. loading a
    config file) gives the first settings, instead of ``sections``, and is what a configuration
    reload calls.
    """
    harnesses: list[AppHarness] = []

    async def make(
        script: FakeEngineScript | None = None,
        *,
        background_lifespan: bool = False,
        headers: dict[str, str] | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        **sections: Any,
    ) -> AppHarness:
        settings = reload_settings() if reload_settings else build_settings(tiny_models_root, **sections)
        factory = fake_client_factory(script)
        manager = MLXModelManager(settings, client_factory=factory)
        app = create_app(settings, manager=manager, reload_settings=reload_settings)
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                base_url=BASE_URL,
                headers=headers,
                timeout=10.0,
            )
        )
        stream_client = await stack.enter_async_context(
            httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE_URL, headers=headers, timeout=10.0)
        )
        harness = AppHarness(app, settings, manager, factory, client, stream_client, _stack=stack)
        harnesses.append(harness)
        if background_lifespan:
            started = asyncio.Event()
            stop = asyncio.Event()

            async def run_lifespan() -> None:
                async with app.router.lifespan_context(app):
                    started.set()
                    await stop.wait()

            task = asyncio.ensure_future(run_lifespan())

            async def finish() -> None:
                stop.set()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 10)

            stack.push_async_callback(finish)
            harness.lifespan_task = asyncio.ensure_future(started.wait())
            stack.callback(harness.lifespan_task.cancel)
        else:
            await stack.enter_async_context(app.router.lifespan_context(app))
        return harness

    yield make
    for harness in reversed(harnesses):
        await harness._stack.aclose()


@pytest.fixture
async def harness(make_app: Callable[..., Awaitable[AppHarness]]) -> AppHarness:
    """The app with the default fake script and default settings."""
    return await make_app()
