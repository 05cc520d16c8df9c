"""The built-in residency defaults against real workers: with no cache_size and the default
model preloaded, another model is served beside it, and a folder dropped in is listed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.conftest import start_server


def test_a_second_model_is_served_next_to_the_default_model(tmp_path: Path, make_tiny_model: Any) -> None:
    folder = make_tiny_model("alpha")
    make_tiny_model("beta", seed=1)
    server = start_server(
        tmp_path, {"defaults": {"model_directory": str(folder.parent), "embedded_model": False, "model": "alpha"}}
    )
    try:
        with server.client() as http:
            body = {"model": "beta", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            loaded = {m["id"]: m for m in http.get("/v1/health").json()["loaded_models"]}
            assert set(loaded) == {"alpha", "beta"}  # the budget holds both: no count cap
            assert loaded["alpha"]["default"] is True and loaded["alpha"]["pinned"] is False
            assert http.get("/health").status_code == 200
            make_tiny_model("gamma", seed=2)
            assert "gamma" in [m["id"] for m in http.get("/v1/models").json()["data"]]
    finally:
        server.stop()
