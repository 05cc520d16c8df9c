"""The model manager through the API, with a fake engine: budget, eviction, pins, keep-alive,
rescans and the admin API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeEngineScript, assert_error, chat_body

CHAT = "/v1/chat/completions"


@pytest.fixture
def models_dir(make_tiny_model: Any) -> Path:
    for name in ("alpha", "beta", "gamma"):
        folder = make_tiny_model(name)
    return Path(folder.parent)


def settings_for(models_dir: Path, budget_gb: float, **defaults: Any) -> dict[str, Any]:
    """Each model costs exactly its required_memory_gb: no KV allowance, no prefix cache."""
    return {
        "defaults": {
            "model_directory": str(models_dir),
            "memory_budget_gb": budget_gb,
            "kv_allowance_tokens": 0,
            "prefix_cache_bytes": 0,
            "cache_size": 8,
            **defaults,
        },
        "models": {name: {"required_memory_gb": 2} for name in ("alpha", "beta", "gamma")},
    }


async def states(harness: Any) -> dict[str, str]:
    rows = (await harness.client.get("/v1/admin/models")).json()["data"]
    return {row["id"]: row["state"] for row in rows}


async def ask(harness: Any, model: str) -> Any:
    return await harness.client.post(CHAT, json=chat_body(model=model))


async def test_loading_past_the_budget_evicts_the_least_recently_used(make_app: Any, models_dir: Path) -> None:
    harness = await make_app(**settings_for(models_dir, 4.5))
    assert (await ask(harness, "alpha")).status_code == 200
    assert (await ask(harness, "beta")).status_code == 200
    assert (await ask(harness, "alpha")).status_code == 200  # alpha is now the most recent
    assert (await ask(harness, "gamma")).status_code == 200
    assert await states(harness) == {"alpha": "ready", "beta": "unloaded", "gamma": "ready"}


async def test_busy_models_take_turns_and_requests_are_grouped(make_app: Any, models_dir: Path) -> None:
    """gamma needs alpha's place while alpha is busy: gamma waits for alpha's running request,
    and a new alpha request arriving meanwhile waits for gamma's turn instead of cutting in."""
    script = FakeEngineScript(first_chunk_delay=0.5)
    harness = await make_app(script, **settings_for(models_dir, 4.5))
    assert (await ask(harness, "beta")).status_code == 200
    await harness.client.post("/v1/admin/models/beta/pin")
    busy = asyncio.ensure_future(ask(harness, "alpha"))  # alpha loads and stays busy for 0.5 s
    await asyncio.sleep(0.2)
    finished: list[str] = []

    async def timed(model: str) -> Any:
        response = await ask(harness, model)
        finished.append(model)
        return response

    gamma = asyncio.ensure_future(timed("gamma"))
    await asyncio.sleep(0.1)
    alpha_again = asyncio.ensure_future(timed("alpha"))
    assert (await busy).status_code == 200
    assert (await gamma).status_code == 200
    assert (await alpha_again).status_code == 200
    assert finished == ["gamma", "alpha"]
    assert (await states(harness))["beta"] == "ready"  # the pinned model never moved


async def test_pinned_models_in_the_way_is_507_and_nothing_is_evicted(make_app: Any, models_dir: Path) -> None:
    harness = await make_app(**settings_for(models_dir, 4.5))
    for model in ("alpha", "beta"):
        assert (await ask(harness, model)).status_code == 200
        await harness.client.post(f"/v1/admin/models/{model}/pin")
    refused = await ask(harness, "gamma")
    error = assert_error(refused, 507, code="insufficient_memory")
    assert "gamma" in error["message"] and "memory_budget_gb" in error["message"]
    assert await states(harness) == {"alpha": "ready", "beta": "ready", "gamma": "unloaded"}


async def test_waiting_for_a_turn_is_bounded(make_app: Any, models_dir: Path) -> None:
    script = FakeEngineScript(first_chunk_delay=1.0)
    harness = await make_app(script, **settings_for(models_dir, 2.5, swap_wait=0.2))
    busy = asyncio.ensure_future(ask(harness, "alpha"))
    await asyncio.sleep(0.2)
    refused = await ask(harness, "beta")
    assert_error(refused, 503, code="model_slots_busy")
    assert refused.headers["retry-after"]
    assert (await busy).status_code == 200
    assert (await ask(harness, "beta")).status_code == 200  # alpha is idle now: it gives way


async def test_a_model_larger_than_the_budget_is_507(make_app: Any, models_dir: Path) -> None:
    sections = settings_for(models_dir, 4.5)
    sections["models"]["gamma"] = {"required_memory_gb": 9}
    harness = await make_app(**sections)
    assert (await ask(harness, "alpha")).status_code == 200
    assert_error(await ask(harness, "gamma"), 507, code="insufficient_memory")
    assert (await states(harness))["alpha"] == "ready"
    assert harness.factory.calls == 1


async def test_keep_alive_unloads_idle_models_but_not_pinned_ones(make_app: Any, models_dir: Path) -> None:
    sections = settings_for(models_dir, 64, keep_alive=0.3)
    sections["models"]["beta"]["pin"] = True
    harness = await make_app(**sections)
    assert (await states(harness))["beta"] == "ready"  # pinned models load at start
    assert (await ask(harness, "alpha")).status_code == 200
    for _ in range(40):
        if (await states(harness))["alpha"] == "unloaded":
            break
        await asyncio.sleep(0.1)
    assert await states(harness) == {"alpha": "unloaded", "beta": "ready", "gamma": "unloaded"}


async def test_preload_loads_at_start_without_pinning(make_app: Any, models_dir: Path) -> None:
    sections = settings_for(models_dir, 64)
    sections["models"]["gamma"]["preload"] = True
    harness = await make_app(**sections)
    rows = {r["id"]: r for r in (await harness.client.get("/v1/admin/models")).json()["data"]}
    assert rows["gamma"]["state"] == "ready" and rows["gamma"]["pinned"] is False
    assert rows["alpha"]["state"] == "unloaded"


async def test_admin_load_unload_pin(make_app: Any, models_dir: Path) -> None:
    harness = await make_app(FakeEngineScript(first_chunk_delay=0.4), **settings_for(models_dir, 64))
    loaded = await harness.client.post("/v1/admin/models/alpha/load")
    assert loaded.status_code == 200 and loaded.json()["state"] == "ready"
    await harness.client.post("/v1/admin/models/alpha/pin")
    assert_error(await harness.client.post("/v1/admin/models/alpha/unload"), 409, code="conflict")
    await harness.client.post("/v1/admin/models/alpha/unpin")
    busy = asyncio.ensure_future(ask(harness, "alpha"))
    await asyncio.sleep(0.2)
    assert_error(await harness.client.post("/v1/admin/models/alpha/unload"), 409, code="conflict")
    assert (await busy).status_code == 200
    unloaded = await harness.client.post("/v1/admin/models/alpha/unload")
    assert unloaded.json()["state"] == "unloaded"
    assert_error(await harness.client.post("/v1/admin/models/nope/load"), 404, code="model_not_found")


async def test_admin_needs_the_api_key(make_app: Any, models_dir: Path) -> None:
    sections = settings_for(models_dir, 64)
    sections["server"] = {"api_key": "sekrit", "log_file": None}
    harness = await make_app(**sections)
    assert (await harness.client.get("/v1/admin/models")).status_code == 401
    ok = await harness.client.get("/v1/admin/models", headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200


async def test_a_new_folder_is_served_without_a_restart(make_app: Any, models_dir: Path, make_tiny_model: Any) -> None:
    harness = await make_app(**settings_for(models_dir, 64, rescan_interval=0))
    assert_error(await ask(harness, "delta"), 404, code="model_not_found")
    make_tiny_model("delta")
    assert (await ask(harness, "delta")).status_code == 200
    listed = [m["id"] for m in (await harness.client.get("/v1/models")).json()["data"]]
    assert "delta" in listed


async def test_ten_concurrent_first_requests_load_once(make_app: Any, models_dir: Path) -> None:
    harness = await make_app(FakeEngineScript(start_delay=0.2), **settings_for(models_dir, 64))
    responses = await asyncio.gather(*(ask(harness, "gamma") for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert harness.factory.calls == 1


async def test_memory_pressure_caps_max_tokens_per_level(make_app: Any, models_dir: Path) -> None:
    sections = settings_for(models_dir, 64)
    sections["models"]["alpha"]["memory_pressure_max_tokens"] = {"normal": 3, "moderate": 3, "high": 2, "critical": 1}
    harness = await make_app(**sections)
    assert (await harness.client.post(CHAT, json=chat_body(model="alpha", max_tokens=100))).status_code == 200
    assert (await harness.client.post(CHAT, json=chat_body(model="beta", max_tokens=100))).status_code == 200
    sent = {r.request_id: r.params.max_tokens for r in harness.factory.requests}
    assert sorted(sent.values()) in ([1, 100], [2, 100], [3, 100])  # alpha capped for the level, beta not


async def test_built_in_defaults_serve_a_second_model_next_to_the_default(make_app: Any, models_dir: Path) -> None:
    """No cache_size, the machine's own budget: the default model does not keep others out."""
    harness = await make_app(defaults={"model_directory": str(models_dir), "model": "alpha"})
    assert harness.settings.defaults.cache_size is None
    assert (await states(harness))["alpha"] == "ready"
    assert (await ask(harness, "beta")).status_code == 200
    assert (await ask(harness, "gamma")).status_code == 200
    assert await states(harness) == {"alpha": "ready", "beta": "ready", "gamma": "ready"}
    assert (await harness.client.get("/health")).status_code == 200


async def test_the_default_model_is_evicted_last(make_app: Any, models_dir: Path) -> None:
    """Two models fit: the default model stays while an older idle model can give way, and gives
    way itself when nothing else can."""
    harness = await make_app(**settings_for(models_dir, 4.5, cache_size=None, model="alpha"))
    assert (await ask(harness, "beta")).status_code == 200
    assert (await ask(harness, "gamma")).status_code == 200  # beta goes, though alpha is older
    assert await states(harness) == {"alpha": "ready", "beta": "unloaded", "gamma": "ready"}
    rows = {r["id"]: r for r in (await harness.client.get("/v1/admin/models")).json()["data"]}
    assert rows["alpha"]["pinned"] is False
    await harness.client.post("/v1/admin/models/gamma/pin")
    assert (await ask(harness, "beta")).status_code == 200  # only alpha can make room now
    assert await states(harness) == {"alpha": "unloaded", "beta": "ready", "gamma": "ready"}
    assert (await harness.client.get("/health")).status_code == 200  # ready without the default model
    assert (await ask(harness, "alpha")).status_code == 200  # it loads again on request
    assert (await states(harness))["alpha"] == "ready"


async def test_health_is_503_when_no_model_fits_the_budget(make_app: Any, models_dir: Path) -> None:
    harness = await make_app(**settings_for(models_dir, 1.5))
    response = await harness.client.get("/health")
    assert response.status_code == 503
    assert "memory_budget_gb" in response.json()["reason"]


async def test_each_room_decision_is_one_plan(make_app: Any, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load that fits makes two plans (can it ever fit; what goes now), not one per check."""
    import mlx_router.manager.residency as residency_module

    harness = await make_app(**settings_for(models_dir, 4.5))
    assert (await ask(harness, "alpha")).status_code == 200
    assert (await ask(harness, "beta")).status_code == 200
    plans: list[int] = []
    real = residency_module.plan_eviction
    monkeypatch.setattr(residency_module, "plan_eviction", lambda *a, **k: plans.append(1) or real(*a, **k))
    assert (await ask(harness, "gamma")).status_code == 200  # alpha (least recently used) goes
    assert len(plans) == 2
    assert await states(harness) == {"alpha": "unloaded", "beta": "ready", "gamma": "ready"}
