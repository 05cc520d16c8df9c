"""Configuration reload (``POST /v1/admin/reload``; SIGHUP runs the same code) over the fake engine:
models added, changed and removed while requests run, invalid files, restart-only keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlx_router.cli import build_parser, settings_from_args
from mlx_router.config.settings import Settings, load_settings
from mlx_router.manager.manager import ManagerEvent
from tests.fakes import MODEL, FakeEngineScript, assert_error, chat_body

CHAT = "/v1/chat/completions"
RELOAD = "/v1/admin/reload"
SLOW = FakeEngineScript(chunks=tuple("abcdefgh"), chunk_delay=0.03)
"""Streams that last about a quarter of a second: long enough to reload while they run."""


class ConfigFile:
    """A config.json the test rewrites; ``load`` reads it as the server would (no environment)."""

    def __init__(self, path: Path, models_root: Path) -> None:
        self.path = path
        self.models_root = models_root

    def write(self, models: dict[str, Any] | None = None, **sections: dict[str, Any]) -> None:
        config = {
            "defaults": {"model_directory": str(self.models_root), "embedded_model": False, **sections.get("defaults", {})},
            "server": {"log_file": None, **sections.get("server", {})},
            "models": models or {},
        }
        self.path.write_text(json.dumps(config))

    def load(self) -> Settings:
        return load_settings(self.path, environ={})


@pytest.fixture
def config(tmp_path: Path, tiny_models_root: Path) -> ConfigFile:
    file = ConfigFile(tmp_path / "config.json", tiny_models_root)
    file.write()
    return file


def waiter(harness: Any, kind: str, model_id: str) -> asyncio.Event:
    """An event set when the manager emits ``kind`` for ``model_id``."""
    seen = asyncio.Event()

    def listen(event: ManagerEvent) -> None:
        if event.kind == kind and event.model_id == model_id:
            seen.set()

    harness.manager.listeners.append(listen)
    return seen


async def started_stream(harness: Any, body: dict[str, Any]) -> tuple[asyncio.Task[list[str]], asyncio.Event]:
    """A stream read to its end in a task, and an event set once its first token arrived."""
    producing = asyncio.Event()

    async def read() -> list[str]:
        async with harness.stream_client.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            events = []
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if '"content":"a"' in line:
                        producing.set()
            return events

    task = asyncio.ensure_future(read())
    await asyncio.wait_for(producing.wait(), 5)
    return task, producing


def content(events: list[str]) -> str:
    return "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1] if json.loads(e).get("choices")
    )


def finish(events: list[str]) -> str | None:
    reasons = [c["finish_reason"] for e in events[:-1] for c in json.loads(e).get("choices", []) if c["finish_reason"]]
    return reasons[-1] if reasons else None


async def reload(harness: Any, status: int = 200) -> dict[str, Any]:
    response = await harness.client.post(RELOAD)
    assert response.status_code == status, response.text
    return response.json()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- models


async def test_added_model_is_served_at_once(make_app: Any, config: ConfigFile) -> None:
    harness = await make_app(reload_settings=config.load)
    assert (await harness.client.post(CHAT, json=chat_body(model="tiny-alias"))).status_code == 404
    config.write(models={"tiny-alias": {"path": MODEL, "max_tokens": 2}})
    result = await reload(harness)
    assert result["status"] == "reloaded"
    assert result["models"] == {"added": ["tiny-alias"], "removed": [], "changed": [], "reloading": []}
    assert "tiny-alias" in [m["id"] for m in (await harness.client.get("/v1/models")).json()["data"]]
    response = await harness.client.post(CHAT, json=chat_body(model="tiny-alias"))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"  # its own max_tokens


async def test_request_settings_apply_to_the_next_request_without_a_reload(make_app: Any, config: ConfigFile) -> None:
    harness = await make_app(reload_settings=config.load)
    assert (await harness.client.post(CHAT, json=chat_body())).json()["choices"][0]["finish_reason"] == "stop"
    config.write(models={MODEL: {"max_tokens": 2}})
    result = await reload(harness)
    assert result["models"]["changed"] == [MODEL] and result["models"]["reloading"] == []
    response = (await harness.client.post(CHAT, json=chat_body())).json()
    assert response["choices"][0]["message"]["content"] == "Hello,"
    assert response["choices"][0]["finish_reason"] == "length"
    # The same worker served both.
    assert harness.factory.calls == 1 and not harness.factory.clients[0].stopped


async def test_changed_load_settings_apply_at_the_next_load_after_running_requests(
    make_app: Any, config: ConfigFile
) -> None:
    harness = await make_app(SLOW, reload_settings=config.load)
    retired = waiter(harness, "retired", MODEL)
    stream, _ = await started_stream(harness, chat_body(stream=True))
    config.write(models={MODEL: {"context_length": 1024}})
    result = await reload(harness)
    assert result["models"] == {"added": [], "removed": [], "changed": [MODEL], "reloading": [MODEL]}
    # A request sent now waits for the running one to finish, then gets the reloaded model.
    waiting = asyncio.ensure_future(harness.client.post(CHAT, json=chat_body()))
    events = await stream
    assert content(events) == "abcdefgh" and finish(events) == "stop" and events[-1] == "[DONE]"
    response = await waiting
    assert response.status_code == 200, response.text
    await asyncio.wait_for(retired.wait(), 5)
    old, new = harness.factory.clients
    assert old.stopped and len(old.requests) == 1
    assert new.options.context_length == 1024 and len(new.requests) == 1


async def test_idle_model_with_changed_load_settings_unloads_during_the_reload(make_app: Any, config: ConfigFile) -> None:
    harness = await make_app(reload_settings=config.load)
    assert (await harness.client.post(f"/v1/admin/models/{MODEL}/load")).status_code == 200
    config.write(defaults={"max_batch_size": 4})
    result = await reload(harness)
    assert result["applied"] == ["defaults.max_batch_size"]
    assert result["models"]["reloading"] == [MODEL] and result["models"]["changed"] == []
    assert harness.factory.clients[0].stopped
    [row] = (await harness.client.get("/v1/admin/models")).json()["data"]
    assert row["state"] == "unloaded"
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    assert harness.factory.clients[1].options.batch.max_batch_size == 4


async def test_removed_model_finishes_its_requests_then_unloads(make_app: Any, config: ConfigFile) -> None:
    config.write(models={"tiny-alias": {"path": MODEL}})
    harness = await make_app(SLOW, reload_settings=config.load)
    retired = waiter(harness, "retired", "tiny-alias")
    stream, _ = await started_stream(harness, chat_body(model="tiny-alias", stream=True))
    config.write()
    result = await reload(harness)
    assert result["models"]["removed"] == ["tiny-alias"]
    assert_error(await harness.client.post(CHAT, json=chat_body(model="tiny-alias")), 404, code="model_not_found")
    # Still resident until its request ends, and shown as such.
    [row] = [r for r in (await harness.client.get("/v1/admin/models")).json()["data"] if r["id"] == "tiny-alias"]
    assert row["served"] is False and row["retiring"] is True and row["in_flight"] == 1
    events = await stream
    assert content(events) == "abcdefgh" and finish(events) == "stop"
    await asyncio.wait_for(retired.wait(), 5)
    [client] = harness.factory.clients
    assert client.stopped and client.cancellations == []
    models = (await harness.client.get("/v1/admin/models")).json()["data"]
    assert "tiny-alias" not in [m["id"] for m in models]
    assert "tiny-alias" not in (await harness.client.get("/v1/health")).json()["models"]


async def test_newly_pinned_model_is_loaded(make_app: Any, config: ConfigFile) -> None:
    harness = await make_app(reload_settings=config.load)
    loaded = waiter(harness, "loaded", MODEL)
    config.write(models={MODEL: {"pin": True}})
    await reload(harness)
    await asyncio.wait_for(loaded.wait(), 5)
    [row] = (await harness.client.get("/v1/admin/models")).json()["data"]
    assert row["state"] == "ready" and row["pinned"] is True
    config.write()
    await reload(harness)
    [row] = (await harness.client.get("/v1/admin/models")).json()["data"]
    assert row["pinned"] is False


# --------------------------------------------------------------------------- settings and refusals


async def test_restart_only_keys_are_reported_and_not_applied(make_app: Any, config: ConfigFile) -> None:
    harness = await make_app(reload_settings=config.load)
    before = harness.app.state.settings
    config.write(
        defaults={"max_tokens": 3, "spare_worker": False},
        server={"port": 9999, "api_key": "a-new-secret-key-1234", "sse_keepalive_seconds": 2.5},
    )
    result = await reload(harness)
    assert sorted(result["applied"]) == ["defaults.max_tokens", "server.sse_keepalive_seconds"]
    assert sorted(result["needs_restart"]) == ["defaults.spare_worker", "server.api_key", "server.port"]
    assert "a-new-secret-key-1234" not in json.dumps(result)
    now = harness.app.state.settings
    assert now.server.port == before.server.port and now.server.api_key is None
    assert now.defaults.spare_worker == before.defaults.spare_worker
    assert now.defaults.max_tokens == 3 and now.server.sse_keepalive_seconds == 2.5
    assert harness.app.state.runner.settings is now and harness.manager.settings is now
    # No key is needed: the key is a restart-only setting.
    response = await harness.client.post(CHAT, json=chat_body())
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "is not valid JSON"),
        ('{"defaults": {"max_tokenz": 5}}', "Did you mean 'max_tokens'?"),
        ('{"models": {"tiny-llama": {"temp": 9}}}', "models.tiny-llama.temp"),
    ],
)
async def test_invalid_file_is_rejected_and_the_running_config_stays(
    make_app: Any, config: ConfigFile, text: str, says: str
) -> None:
    config.write(models={"tiny-alias": {"path": MODEL}})
    harness = await make_app(reload_settings=config.load)
    before = harness.app.state.settings
    config.path.write_text(text)
    error = assert_error(await harness.client.post(RELOAD), 400, code="invalid_config", message_contains=[says])
    assert "running one stays" in error["message"]
    assert harness.app.state.settings is before and harness.manager.settings is before
    assert (await harness.client.post(CHAT, json=chat_body(model="tiny-alias"))).status_code == 200


async def test_removing_the_default_model_is_refused(make_app: Any, config: ConfigFile) -> None:
    config.write(models={"tiny-alias": {"path": MODEL}}, defaults={"model": "tiny-alias"})
    harness = await make_app(reload_settings=config.load)
    config.write(defaults={"model": "tiny-alias"})
    assert_error(await harness.client.post(RELOAD), 400, code="invalid_config", message_contains=["defaults.model"])
    assert (await harness.client.post(CHAT, json=chat_body(model="tiny-alias"))).status_code == 200


async def test_command_line_and_environment_still_win(
    make_app: Any, config: ConfigFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("MLX_ROUTER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLX_ROUTER_DEFAULTS_TIMEOUT", "33")
    args = build_parser().parse_args(["--config", str(config.path), "--max-tokens", "3"])
    load: Callable[[], Settings] = lambda: settings_from_args(args)  # what the CLI hands the app
    harness = await make_app(reload_settings=load)
    config.write(defaults={"max_tokens": 500, "timeout": 5, "max_n": 2}, models={"tiny-alias": {"path": MODEL}})
    result = await reload(harness)
    assert result["applied"] == ["defaults.max_n"]
    assert result["models"]["added"] == ["tiny-alias"]
    settings = harness.app.state.settings
    assert settings.defaults.max_tokens == 3 and settings.defaults.timeout == 33 and settings.defaults.max_n == 2


async def test_without_a_config_file_there_is_nothing_to_reload(make_app: Any) -> None:
    harness = await make_app()
    assert_error(await harness.client.post(RELOAD), 400, code="no_config_file", message_contains=["--config"])


async def test_reload_needs_the_api_key(make_app: Any, config: ConfigFile) -> None:
    config.write(server={"api_key": "reload-key-0123456789"})
    harness = await make_app(reload_settings=config.load)
    assert_error(await harness.client.post(RELOAD), 401, code="invalid_api_key")
    response = await harness.client.post(RELOAD, headers={"Authorization": "Bearer reload-key-0123456789"})
    assert response.status_code == 200, response.text


async def test_a_pinned_model_reloading_keeps_its_slot(make_app: Any, config: ConfigFile) -> None:
    """While a pinned model loads again after a reload, a model that could only fit in its slot
    is refused at once (503), not after waiting defaults.swap_wait for a turn that never comes."""
    config.write(models={MODEL: {"pin": True}, "tiny-alias": {"path": MODEL}}, defaults={"cache_size": 1, "swap_wait": 5})
    harness = await make_app(FakeEngineScript(start_delay=0.5), reload_settings=config.load)
    loaded = waiter(harness, "loaded", MODEL)
    config.write(
        models={MODEL: {"pin": True, "context_length": 512}, "tiny-alias": {"path": MODEL}},
        defaults={"cache_size": 1, "swap_wait": 5},
    )
    assert (await reload(harness))["models"]["reloading"] == [MODEL]
    started = asyncio.get_running_loop().time()
    response = await harness.client.post(CHAT, json=chat_body(model="tiny-alias"))
    assert_error(response, 503, code="model_slots_busy", message_contains=[MODEL], retry=False)
    assert asyncio.get_running_loop().time() - started < 1.0
    await asyncio.wait_for(loaded.wait(), 5)
    assert harness.factory.clients[-1].options.context_length == 512


async def test_an_unreadable_model_directory_is_refused_and_nothing_changes(
    make_app: Any, config: ConfigFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = await make_app(reload_settings=config.load)
    before = harness.app.state.settings
    config.write(models={"tiny-alias": {"path": MODEL}})

    def unreadable(*_args: Any, **_kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("mlx_router.manager.manager.build_registry", unreadable)
    error = assert_error(await harness.client.post(RELOAD), 400, code="invalid_config", message_contains=["Permission denied"])
    assert "running one stays" in error["message"]
    assert harness.app.state.settings is before
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
