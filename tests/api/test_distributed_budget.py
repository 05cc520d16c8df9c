"""The memory budget of a model served by a group is per host (fake engine: no ranks start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.fakes import assert_error, chat_body

REMOTE = "10.0.0.2"
GROUP = {"hosts": ["127.0.0.1", REMOTE], "backend": "mpi", "strategy": "tensor"}
"""MPI: the ring backend would refuse 127.0.0.1 next to another host (the others cannot reach it)."""


def settings_for(models_dir: Path, **models: Any) -> dict[str, Any]:
    """A 4.5 GB budget per host; each model costs exactly its required_memory_gb."""
    return {
        "defaults": {
            "model_directory": str(models_dir),
            "memory_budget_gb": 4.5,
            "kv_allowance_tokens": 0,
            "prefix_cache_bytes": 0,
            "cache_size": 8,
        },
        "models": models,
    }


async def states(harness: Any) -> dict[str, str]:
    rows = (await harness.client.get("/v1/admin/models")).json()["data"]
    return {row["id"]: row["state"] for row in rows}


async def test_a_group_costs_this_machine_its_share_and_evicts_idle_groups_on_other_hosts(
    make_app: Any, make_tiny_model: Any
) -> None:
    models_dir = make_tiny_model("m").parent
    harness = await make_app(
        **settings_for(
            models_dir,
            big={"path": "m", "required_memory_gb": 8, "distributed": GROUP},  # 4 GB here, 4 GB there
            other={"path": "m", "required_memory_gb": 2, "distributed": {**GROUP, "hosts": [REMOTE, REMOTE]}},
        )
    )
    assert (await harness.client.post("/v1/chat/completions", json=chat_body(model="big"))).status_code == 200
    row = next(r for r in (await harness.client.get("/v1/status")).json()["models"] if r["id"] == "big")
    assert row["cost_gb"] == 4.0
    assert row["distributed"]["hosts"] == ["127.0.0.1", REMOTE]
    # 'other' needs nothing here but 2 GB there: 4 + 2 > 4.5 on that host, so the idle 'big'
    # makes room, as a unit.
    assert (await harness.client.post("/v1/chat/completions", json=chat_body(model="other"))).status_code == 200
    assert await states(harness) == {"big": "unloaded", "m": "unloaded", "other": "ready"}


async def test_a_pinned_group_on_another_host_is_507_naming_the_host(make_app: Any, make_tiny_model: Any) -> None:
    models_dir = make_tiny_model("m").parent
    harness = await make_app(
        **settings_for(
            models_dir,
            big={"path": "m", "required_memory_gb": 8, "distributed": GROUP, "pin": True},
            other={"path": "m", "required_memory_gb": 2, "distributed": {**GROUP, "hosts": ["127.0.0.1", "127.0.0.1", REMOTE, REMOTE]}},
        )
    )
    response = await harness.client.post("/v1/chat/completions", json=chat_body(model="other"))
    assert_error(response, 507, code="insufficient_memory")
    assert f"on host {REMOTE}" in response.json()["error"]["message"]
    assert "held by big" in response.json()["error"]["message"]
    assert (await states(harness))["big"] == "ready"
