"""Which keys a configuration reload applies and which need a restart (a pure comparison)."""

from __future__ import annotations

from typing import Any

from mlx_router.config.reload import split_reload
from mlx_router.config.settings import Defaults, Settings


def settings(**sections: dict[str, Any]) -> Settings:
    return Settings.model_validate(sections)


def test_nothing_changed() -> None:
    effective, applied, restart = split_reload(settings(), settings())
    assert (applied, restart) == ([], [])
    assert effective == settings()


def test_live_keys_apply_and_restart_keys_keep_their_running_value() -> None:
    running = settings(server={"port": 8800, "api_key": "old-key-0123456789"}, defaults={"model": "a"})
    loaded = settings(
        server={"port": 9000, "api_key": "new-key-0123456789", "sse_keepalive_seconds": 3, "worker_start_timeout": 9},
        defaults={"model": "b", "max_tokens": 7, "cache_size": 3, "spare_worker": False},
        models={"x": {"max_tokens": 5}},
    )
    effective, applied, restart = split_reload(running, loaded)
    assert sorted(applied) == [
        "defaults.cache_size", "defaults.max_tokens", "server.sse_keepalive_seconds", "server.worker_start_timeout"
    ]
    assert sorted(restart) == ["defaults.model", "defaults.spare_worker", "server.api_key", "server.port"]
    assert effective.server.port == 8800 and effective.server.api_key == "old-key-0123456789"
    assert effective.defaults.model == "a" and effective.defaults.spare_worker is True
    assert effective.defaults.max_tokens == 7 and effective.defaults.cache_size == 3
    assert effective.server.sse_keepalive_seconds == 3 and effective.server.worker_start_timeout == 9
    assert effective.models == loaded.models
    # The inputs are not changed.
    assert loaded.server.port == 9000 and running.defaults.max_tokens == Defaults().max_tokens



def test_media_limits_apply() -> None:
    effective, applied, restart = split_reload(settings(), settings(media={"max_pdf_pages": 3}))
    assert (applied, restart) == (["media.max_pdf_pages"], [])
    assert effective.media.max_pdf_pages == 3
