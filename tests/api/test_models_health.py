"""``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` and ``GET /v1/health``."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import mlx_router.manager.manager as manager_module
from mlx_router.engine.types import EngineError
from mlx_router.fabricate import make_tiny_llm
from tests.fakes import MODEL, FakeEngineScript, assert_error, chat_body
from tests.openai_schemas import validate

CHAT = "/v1/chat/completions"
LEVELS = {"normal", "moderate", "high", "critical"}


def safetensors_bytes(folder: Path) -> int:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    return sum(f.stat().st_size for f in files)


# --------------------------------------------------------------------------- /v1/models


async def test_list_models(harness: Any, tiny_model_dir: Path) -> None:
    response = await harness.client.get("/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    validate(body, "ListModelsResponse")
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    [card] = body["data"]
    validate(card, "Model")
    assert card["object"] == "model"
    assert card["state"] == "unloaded"
    memory = card["memory_requirements"]
    assert memory["weight_bytes"] == safetensors_bytes(tiny_model_dir)
    assert memory["measured_from"] == "weight_files"
    assert memory["required_gb"] == round(safetensors_bytes(tiny_model_dir) / 1024**3, 3)
    assert memory["can_load_now"] is True
    assert body["memory_status"]["pressure"] in LEVELS
    assert body["memory_status"]["available_gb"] > 0
    # Nothing was loaded by listing.
    assert harness.factory.calls == 0


async def test_list_models_after_load_reports_measured_memory(harness: Any) -> None:
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    [card] = (await harness.client.get("/v1/models")).json()["data"]
    validate(card, "Model")
    assert card["state"] == "ready"
    assert card["memory_requirements"]["measured_from"] == "mlx_active_memory"
    assert card["memory_requirements"]["weight_bytes"] == harness.factory.script.weight_bytes
    assert card["parameters"]["context_length"] == harness.factory.script.context_length


async def test_list_models_weight_bytes_of_several_models(make_app: Any, make_tiny_model: Any) -> None:
    small = make_tiny_model("small-one")
    big = make_tiny_model("bigger-one", hidden_size=128)

    harness = await make_app(defaults={"model_directory": str(small.parent)})
    data = {m["id"]: m for m in (await harness.client.get("/v1/models")).json()["data"]}
    assert set(data) == {"small-one", "bigger-one"}
    assert data["small-one"]["memory_requirements"]["weight_bytes"] == safetensors_bytes(small)
    assert data["bigger-one"]["memory_requirements"]["weight_bytes"] == safetensors_bytes(big)
    assert safetensors_bytes(big) > safetensors_bytes(small)


async def test_a_dropped_folder_is_listed_without_being_requested(
    make_app: Any, make_tiny_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing is current: a folder added to (or removed from) the model directory shows at
    the next GET /v1/models, while listings of an unchanged directory do not rescan it."""
    first = make_tiny_model("first-one")
    harness = await make_app(defaults={"model_directory": str(first.parent), "rescan_interval": 3600})
    scans: list[Path] = []
    real = manager_module.build_registry
    monkeypatch.setattr(manager_module, "build_registry", lambda models, root: scans.append(root) or real(models, root))

    async def listed() -> list[str]:
        return [m["id"] for m in (await harness.client.get("/v1/models")).json()["data"]]

    assert await listed() == ["first-one"]
    assert await listed() == ["first-one"]
    assert scans == []  # nothing changed: no rescan
    second = make_tiny_model("second-one")
    assert await listed() == ["first-one", "second-one"]
    assert len(scans) == 1
    shutil.rmtree(second)
    assert await listed() == ["first-one"]
    assert harness.factory.calls == 0


async def test_a_folder_filled_in_late_is_listed(make_app: Any, make_tiny_model: Any, tmp_path: Path) -> None:
    """A folder created empty and filled in afterwards (a copy in progress) is listed once complete."""
    first = make_tiny_model("first-one")
    source = make_tiny_llm(tmp_path / "elsewhere" / "late-one")
    harness = await make_app(defaults={"model_directory": str(first.parent), "rescan_interval": 3600})
    late = first.parent / "late-one"
    late.mkdir()
    assert [m["id"] for m in (await harness.client.get("/v1/models")).json()["data"]] == ["first-one"]
    for item in sorted(source.iterdir(), key=lambda f: f.name == "config.json"):  # config.json last
        item.rename(late / item.name)
    ids = [m["id"] for m in (await harness.client.get("/v1/models")).json()["data"]]
    assert ids == ["first-one", "late-one"]


async def test_org_name_model_ids(make_app: Any, make_tiny_model: Any) -> None:
    """LM Studio's org/name layout: the id has a slash, in the URL and in requests."""
    path = make_tiny_model("lmstudio-community/tiny-chat")
    harness = await make_app(defaults={"model_directory": str(path.parent.parent)})
    response = await harness.client.get("/v1/models/lmstudio-community/tiny-chat")
    assert response.status_code == 200, response.text
    validate(response.json(), "Model")
    assert response.json()["id"] == "lmstudio-community/tiny-chat"
    body = chat_body(model="lmstudio-community/tiny-chat")
    response = await harness.client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "lmstudio-community/tiny-chat"
    assert harness.factory.clients[0].options.model_id == "lmstudio-community/tiny-chat"


async def test_get_model(harness: Any) -> None:
    response = await harness.client.get(f"/v1/models/{MODEL}")
    assert response.status_code == 200, response.text
    card = response.json()
    validate(card, "Model")
    assert card["id"] == MODEL
    assert isinstance(card["created"], int) and card["created"] > 0


@pytest.mark.parametrize("model_id", ["nope", "tiny-llama/extra", "TINY-LLAMA"])
async def test_get_unknown_model_is_404(harness: Any, model_id: str) -> None:
    response = await harness.client.get(f"/v1/models/{model_id}")
    error = assert_error(response, 404, code="model_not_found", param="model")
    assert MODEL in error["message"]
    assert harness.factory.calls == 0


async def test_get_path_shaped_model_id_is_400(harness: Any) -> None:
    response = await harness.client.get("/v1/models/..%2F..%2Fetc")
    assert_error(response, 400, code="invalid_request", param="model")
    assert harness.factory.calls == 0


async def test_configured_model_with_required_memory(make_app: Any) -> None:
    harness = await make_app(models={MODEL: {"required_memory_gb": 3.5, "max_tokens": 77, "chat_template": "chatml"}})
    card = (await harness.client.get(f"/v1/models/{MODEL}")).json()
    assert card["memory_requirements"]["required_gb"] == 3.5
    assert card["parameters"]["max_tokens"] == 77
    assert card["parameters"]["chat_template"] == "chatml"


# --------------------------------------------------------------------------- /health


async def test_health_ok_without_default_model(harness: Any) -> None:
    response = await harness.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "reason": None}


async def test_health_503_while_default_model_loads(make_app: Any) -> None:
    harness = await make_app(
        script=FakeEngineScript(start_delay=0.6), defaults={"model": MODEL}, background_lifespan=True
    )
    # Wait until the manager has started loading the default model.
    deadline = time.monotonic() + 3
    while harness.manager.states.get(MODEL) is None or harness.manager.states[MODEL].value != "loading":
        assert time.monotonic() < deadline, "the default model never started loading"
        await asyncio.sleep(0.01)
    response = await harness.client.get("/health")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert MODEL in body["reason"] and "loading" in body["reason"]
    details = (await harness.client.get("/v1/health")).json()
    assert details["status"] == "unavailable"
    assert details["models"][MODEL] == "loading"
    assert [m["state"] for m in (await harness.client.get("/v1/models")).json()["data"]] == ["loading"]

    # A chat request now waits for that same load instead of starting another.
    chat = asyncio.ensure_future(harness.client.post(CHAT, json=chat_body()))
    await asyncio.wait_for(harness.lifespan_task, 5)
    response = await harness.client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "reason": None}
    assert (await chat).status_code == 200
    assert harness.factory.calls == 1
    details = (await harness.client.get("/v1/health")).json()
    assert details["loaded_models"][0]["default"] is True
    assert details["loaded_models"][0]["pinned"] is False  # kept while room allows, not pinned


async def test_default_model_restarts_after_a_crash(make_app: Any) -> None:
    """The crash fails the request; the default model comes back without a new request, and the
    server stays ready meanwhile (a request would wait for that load)."""
    script = FakeEngineScript(crash_after=0, faulty_requests=1, start_delay=0.3)
    harness = await make_app(script=script, defaults={"model": MODEL})
    assert (await harness.client.get("/health")).status_code == 200
    assert harness.factory.calls == 1
    response = await harness.client.post(CHAT, json=chat_body())
    assert_error(response, 503, code="worker_crashed")
    assert (await harness.client.get("/health")).status_code == 200
    details = (await harness.client.get("/v1/health")).json()
    assert details["worker_restarts"] == 1 and details["models"][MODEL] == "loading"
    deadline = time.monotonic() + 3
    while (await harness.client.get("/v1/health")).json()["models"][MODEL] != "ready":
        assert time.monotonic() < deadline, "the default model did not come back"
        await asyncio.sleep(0.02)
    assert harness.factory.calls == 2
    assert harness.factory.clients[0].crashed and harness.factory.clients[1].alive
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    assert harness.factory.calls == 2


async def test_default_model_is_not_restarted_while_the_server_drains(make_app: Any) -> None:
    """A worker that ends during a drain (as it does when the stop signal reaches it too) stays
    down: nothing could use a new one, and loading it would hold the shutdown back."""
    script = FakeEngineScript(crash_after=1, faulty_requests=1, first_chunk_delay=0.3)
    harness = await make_app(script=script, defaults={"model": MODEL})
    assert harness.factory.calls == 1
    running = asyncio.ensure_future(harness.client.post(CHAT, json=chat_body()))
    runner = harness.app.state.runner
    deadline = time.monotonic() + 3
    while runner.running == 0:
        assert time.monotonic() < deadline, "the request never started"
        await asyncio.sleep(0.01)
    await runner.drain(5.0)
    assert_error(await running, 503, code="worker_crashed")
    await asyncio.sleep(0.2)
    assert harness.factory.calls == 1
    assert harness.manager.states[MODEL].value == "failed"


async def test_failing_default_model_does_not_stop_the_server(make_app: Any) -> None:
    """A broken defaults.model must not take the server down: /health says why."""
    script = FakeEngineScript(start_error=EngineError("internal", "weights are corrupt"))
    harness = await make_app(script=script, defaults={"model": MODEL})
    response = await harness.client.get("/health")
    assert response.status_code == 503
    reason = response.json()["reason"]
    assert MODEL in reason and "failed" in reason and "weights are corrupt" in reason
    card = (await harness.client.get(f"/v1/models/{MODEL}")).json()
    assert card["state"] == "failed" and "weights are corrupt" in card["failure_reason"]
    # Requests are answered (with the load error), not dropped.
    assert_error(await harness.client.post(CHAT, json=chat_body()), 503, code="model_load_failed")


# --------------------------------------------------------------------------- /v1/health


async def test_v1_health_details(harness: Any) -> None:
    body = (await harness.client.get("/v1/health")).json()
    assert body["status"] == "ok"
    assert body["version"]
    memory = body["memory"]
    for key in ("total_gb", "available_gb", "used_percent", "swap_percent", "pressure"):
        assert key in memory, memory
    assert memory["total_gb"] >= memory["available_gb"] > 0
    assert body["pressure"] in LEVELS and body["pressure"] == memory["pressure"]
    assert body["loaded_models"] == [] and body["current_model"] is None
    assert body["models"] == {MODEL: "unloaded"}
    assert body["uptime_seconds"] >= 0
    assert body["requests"] == {"total": 0, "failed": 0}
    assert body["worker_restarts"] == 0 and body["loads"] == 0

    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    body = (await harness.client.get("/v1/health")).json()
    assert body["current_model"] == MODEL
    [loaded] = body["loaded_models"]
    assert loaded["id"] == MODEL
    assert loaded["pid"] == harness.factory.clients[0].pid
    assert loaded["in_flight"] == 0
    assert loaded["backend"] == "cpu"
    assert body["models"] == {MODEL: "ready"}
    assert body["loads"] == 1


async def test_v1_health_request_counts_increase(harness: Any) -> None:
    for expected in (1, 2, 3):
        stream = expected == 2
        assert (await harness.client.post(CHAT, json=chat_body(stream=stream))).status_code == 200
        assert (await harness.client.get("/v1/health")).json()["requests"] == {"total": expected, "failed": 0}


async def test_v1_health_counts_failures(make_app: Any) -> None:
    harness = await make_app(script=FakeEngineScript(error_after=1, faulty_requests=1))
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 500
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    assert (await harness.client.get("/v1/health")).json()["requests"] == {"total": 2, "failed": 1}


async def test_v1_health_counts_an_admission_failure_once(make_app: Any) -> None:
    """An error before admission (here: prompt too long) is one failed request, not two."""
    script = FakeEngineScript(admission_error=EngineError("context_length", "too long"), faulty_requests=1)
    harness = await make_app(script=script)
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 400
    assert (await harness.client.get("/v1/health")).json()["requests"] == {"total": 1, "failed": 1}


async def test_v1_health_uptime_increases(harness: Any) -> None:
    harness.manager.started_at -= 5  # as if the server had started 5 s ago
    first = (await harness.client.get("/v1/health")).json()["uptime_seconds"]
    assert 5 <= first < 60
    harness.manager.started_at -= 10
    second = (await harness.client.get("/v1/health")).json()["uptime_seconds"]
    assert second >= first + 10
