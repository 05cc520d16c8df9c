"""Model workers keep an installed PyTorch out (``defaults.worker_pytorch``).

transformers imports PyTorch whenever it is installed; MLX never uses it, and a worker's load
takes 2-3 s and ~500 MB more. These tests put a stand-in ``torch`` (with its dist-info, so
transformers finds it "installed") on the server's path. It records each import and has none of
PyTorch's modules, so a process that imports it cannot load a model: by default every worker —
the first one, the spare a later load adopts — loads and serves without importing it, and with
``worker_pytorch: true`` the worker imports it (and fails, which proves the key is read)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningServer, start_server, wait_until

pytestmark = pytest.mark.integration

STAND_IN = '''import os
from pathlib import Path
from typing import Any

with open(Path(__file__).parent.parent / "imported.txt", "a") as f:
    f.write(f"{os.getpid()}\\n")
__version__ = "2.9.0"
'''


@pytest.fixture
def stand_in_torch(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(STAND_IN)
    dist = site / "torch-2.9.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.9.0\n")
    (dist / "RECORD").write_text("")
    return site


def serve(tmp_path: Path, models_root: Path, site: Path, **defaults: object) -> RunningServer:
    return start_server(
        tmp_path,
        {
            "defaults": {
                "model": "tiny-llama",
                "model_directory": str(models_root),
                "embedded_model": False,
                "max_tokens": 4,
                **defaults,
            },
            "models": {"tiny-other": {"path": "tiny-llama"}},
        },
        env={"PYTHONPATH": f"{site}:{Path(__file__).resolve().parents[2]}"},
    )


@pytest.fixture
def hidden_server(tmp_path: Path, tiny_models_root: Path, stand_in_torch: Path) -> Iterator[RunningServer]:
    server = serve(tmp_path, tiny_models_root, stand_in_torch, spare_worker=True)
    yield server
    server.stop()


def health(server: RunningServer) -> dict[str, Any]:
    with server.client() as http:
        return http.get("/v1/health").json()  # type: ignore[no-any-return]


def chat(server: RunningServer, model: str) -> httpx.Response:
    with server.client() as http:
        return http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_workers_load_and_serve_without_importing_an_installed_pytorch(
    hidden_server: RunningServer, stand_in_torch: Path
) -> None:
    first = chat(hidden_server, "tiny-llama")
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["completion_tokens"] == 4
    # The second model is loaded by the spare worker, started with MLX and mlx-lm imported.
    assert wait_until(lambda: health(hidden_server)["spare_worker_pid"] is not None, timeout=60)
    spare = health(hidden_server)["spare_worker_pid"]
    second = chat(hidden_server, "tiny-other")
    assert second.status_code == 200, second.text
    assert {m["id"]: m["pid"] for m in health(hidden_server)["loaded_models"]}["tiny-other"] == spare
    assert not (stand_in_torch / "imported.txt").exists()


def test_worker_pytorch_true_lets_the_worker_import_it(
    tmp_path: Path, tiny_models_root: Path, stand_in_torch: Path
) -> None:
    server = serve(tmp_path, tiny_models_root, stand_in_torch, worker_pytorch=True)
    try:
        response = chat(server, "tiny-llama")
        assert response.status_code == 503, response.text  # the stand-in has no torch.nn
        assert response.json()["error"]["code"] == "model_load_failed"
    finally:
        server.stop()
    importers = (stand_in_torch / "imported.txt").read_text().split()
    assert importers and all(pid.isdigit() for pid in importers)
    assert str(server.process.pid) not in importers  # the router itself never imports it
