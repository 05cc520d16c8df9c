"""Endpoints are found by their modules: a new module in ``api/serving`` (or ``api/routes``) with
a ``router`` is served without editing the app factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlx_router.api import serving
from mlx_router.config.settings import Settings

PROBE = '''
from fastapi import APIRouter

router = APIRouter()


@router.get("/v1/probe-endpoint")
async def probe() -> dict[str, str]:
    return {"object": "probe"}
'''


async def test_a_serving_module_with_a_router_is_served(
    make_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "zz_probe_endpoint.py").write_text(PROBE)
    monkeypatch.setattr(serving, "__path__", [*serving.__path__, str(tmp_path)])
    harness = await make_app()
    response = await harness.client.get("/v1/probe-endpoint")
    assert response.status_code == 200 and response.json() == {"object": "probe"}
    assert "/v1/probe-endpoint" in (await harness.client.get("/openapi.json")).json()["paths"]


async def test_every_endpoint_is_found(make_app: Any) -> None:
    harness = await make_app()
    paths = set((await harness.client.get("/openapi.json")).json()["paths"])
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages", "/v1/responses",
                 "/v1/models", "/health", "/v1/admin/reload", "/v1/status"):
        assert path in paths


def test_the_data_directory_holds_what_the_server_writes(tmp_path: Path) -> None:
    default = Settings()
    assert default.responses_store_file == Path("data/responses.sqlite3")
    assert default.prefix_cache_dir == Path("data/prefix-cache")
    moved = Settings.model_validate({"server": {"data_directory": str(tmp_path)}})
    assert moved.responses_store_file == tmp_path / "responses.sqlite3"
    assert moved.prefix_cache_dir == tmp_path / "prefix-cache"
    chosen = Settings.model_validate(
        {"server": {"data_directory": str(tmp_path), "responses_store_path": str(tmp_path / "r.db")},
         "defaults": {"prefix_cache_directory": str(tmp_path / "kv")}}
    )
    assert chosen.responses_store_file == tmp_path / "r.db" and chosen.prefix_cache_dir == tmp_path / "kv"
