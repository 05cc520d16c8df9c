"""``GET /metrics`` (Prometheus), ``GET /v1/status`` and the status page, over the fake engine."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlx_router.engine.types import EngineError, WorkerMemory
from mlx_router.metrics.history import BUCKET_SECONDS
from tests.fakes import CRASH_REASON, MODEL, FakeEngineScript, assert_error, chat_body

CHAT = "/v1/chat/completions"
KEY = "metrics-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHUNKS = ("Hello", ",", " world", "!")
"""The fake engine's default output: four tokens."""


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition: (name, labels) → value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def scrape(harness: Any, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await harness.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


async def read_stream(harness: Any, body: dict[str, Any]) -> list[str]:
    """The data lines of a stream, read to its end."""
    async with harness.stream_client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]


# --------------------------------------------------------------------------- /metrics


async def test_metrics_need_the_key_unless_public(make_app: Any) -> None:
    keyed = await make_app(server={"api_key": KEY})
    assert_error(await keyed.client.get("/metrics"), 401, code="invalid_api_key")
    assert (await keyed.client.get("/metrics", headers=AUTH)).status_code == 200
    public = await make_app(server={"api_key": KEY, "metrics_public": True})
    assert (await public.client.get("/metrics")).status_code == 200
    # metrics_public opens /metrics only.
    assert_error(await public.client.get("/v1/status"), 401, code="invalid_api_key")


async def test_generation_counts_tokens_and_latencies_per_model(make_app: Any) -> None:
    harness = await make_app(FakeEngineScript(prompt_tokens=9, first_chunk_delay=0.05, chunk_delay=0.01))
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    events = await read_stream(harness, chat_body(stream=True, n=2))
    assert events[-1] == "[DONE]"
    found = await scrape(harness)

    assert value(found, "mlx_router_http_requests_total", route=CHAT, model=MODEL, status="200") == 2
    assert value(found, "mlx_router_generation_requests_total", model=MODEL) == 2
    sequences = 3  # one choice, then two
    assert value(found, "mlx_router_prompt_tokens_total", model=MODEL) == 9 * sequences
    assert value(found, "mlx_router_cached_prompt_tokens_total", model=MODEL) == 0
    assert value(found, "mlx_router_generated_tokens_total", model=MODEL) == len(CHUNKS) * sequences
    # One first token per sequence, the others are inter-token gaps.
    assert value(found, "mlx_router_time_to_first_token_seconds_count", model=MODEL) == sequences
    assert value(found, "mlx_router_inter_token_latency_seconds_count", model=MODEL) == (len(CHUNKS) - 1) * sequences
    ttft = value(found, "mlx_router_time_to_first_token_seconds_sum", model=MODEL)
    assert ttft is not None and ttft >= 0.05 * sequences
    itl = value(found, "mlx_router_inter_token_latency_seconds_sum", model=MODEL)
    assert itl is not None and itl >= 0.01 * (len(CHUNKS) - 1) * sequences
    # The one load, and the model's state read at scrape time.
    assert value(found, "mlx_router_model_loads_total", model=MODEL, result="ok") == 1
    assert value(found, "mlx_router_model_load_seconds_count", model=MODEL) == 1
    assert value(found, "mlx_router_model_state", model=MODEL, state="ready") == 1
    assert value(found, "mlx_router_model_state", model=MODEL, state="unloaded") == 0
    assert value(found, "mlx_router_model_weight_bytes", model=MODEL) == harness.factory.script.weight_bytes
    cost = value(found, "mlx_router_model_cost_bytes", model=MODEL)
    assert cost == harness.manager.cost_bytes(harness.manager.entries[MODEL])
    assert value(found, "mlx_router_memory_resident_bytes") == cost
    assert value(found, "mlx_router_memory_budget_bytes") == harness.manager.budget_bytes
    assert value(found, "mlx_router_models_resident") == 1
    assert value(found, "mlx_router_model_in_flight", model=MODEL) == 0
    assert value(found, "mlx_router_model_queue_depth", model=MODEL) == 0


async def test_mlx_memory_as_the_worker_reports_it(make_app: Any) -> None:
    """The worker's last memory report is a gauge per model and a column of the admin list;
    a model that has not reported has neither (no zero that looks measured)."""
    silent = await make_app()
    assert (await silent.client.post(CHAT, json=chat_body())).status_code == 200
    assert value(await scrape(silent), "mlx_router_model_mlx_active_bytes", model=MODEL) is None
    (row,) = (await silent.client.get("/v1/admin/models")).json()["data"]
    assert row["mlx_active_gb"] is None and row["mlx_peak_gb"] is None
    memory = WorkerMemory(active_bytes=3 * 2**30, peak_bytes=5 * 2**30, cache_bytes=7 * 2**20)
    harness = await make_app(FakeEngineScript(memory=memory))
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    found = await scrape(harness)
    assert value(found, "mlx_router_model_mlx_active_bytes", model=MODEL) == memory.active_bytes
    assert value(found, "mlx_router_model_mlx_peak_bytes", model=MODEL) == memory.peak_bytes
    assert value(found, "mlx_router_model_mlx_cache_bytes", model=MODEL) == memory.cache_bytes
    (row,) = (await harness.client.get("/v1/admin/models")).json()["data"]
    assert (row["mlx_active_gb"], row["mlx_peak_gb"]) == (3.0, 5.0)


async def test_state_gauges_are_read_at_scrape_time(make_app: Any) -> None:
    harness = await make_app()
    before = await scrape(harness)
    assert value(before, "mlx_router_model_state", model=MODEL, state="unloaded") == 1
    assert value(before, "mlx_router_models_resident") == 0
    assert (await harness.client.post(f"/v1/admin/models/{MODEL}/load")).status_code == 200
    after = await scrape(harness)
    assert value(after, "mlx_router_model_state", model=MODEL, state="ready") == 1
    assert value(after, "mlx_router_models_resident") == 1
    level = harness.manager.monitor.snapshot().level
    assert value(after, "mlx_router_memory_pressure", level=level) == 1
    assert sum(value(after, "mlx_router_memory_pressure", level=lv) or 0 for lv in ("normal", "moderate", "high", "critical")) == 1


async def test_in_flight_and_queue_depth_while_requests_run(make_app: Any) -> None:
    harness = await make_app(
        FakeEngineScript(chunks=tuple("abcdefgh"), chunk_delay=0.05), models={MODEL: {"max_batch_size": 1}}
    )
    streams = [asyncio.ensure_future(read_stream(harness, chat_body(stream=True))) for _ in range(3)]
    # Wait for all three to reach the worker, on the manager's own count.
    for _ in range(200):
        if sum(c.in_flight for c in harness.factory.clients) == 3:
            break
        await asyncio.sleep(0.01)
    found = await scrape(harness)
    assert value(found, "mlx_router_model_in_flight", model=MODEL) == 3
    # One sequence fits the batch (max_batch_size 1); two wait.
    assert value(found, "mlx_router_model_queue_depth", model=MODEL) == 2
    for events in await asyncio.gather(*streams):
        assert events[-1] == "[DONE]"
    found = await scrape(harness)
    assert value(found, "mlx_router_model_in_flight", model=MODEL) == 0
    assert value(found, "mlx_router_model_queue_depth", model=MODEL) == 0


async def test_errors_by_route_model_status_and_code(make_app: Any) -> None:
    harness = await make_app(
        FakeEngineScript(error_after=2, error=EngineError("internal", "scripted engine failure"), faulty_requests=1),
        server={"api_key": KEY},
    )
    # 401 before routing still names the route.
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 401
    # 404 unknown model: no model label (ids that do not resolve never become labels).
    assert (await harness.client.post(CHAT, json=chat_body(model="nope"), headers=AUTH)).status_code == 404
    # 400 after resolving: labelled with the model.
    assert (await harness.client.post(CHAT, json=chat_body(n=99), headers=AUTH)).status_code == 400
    # An error inside a 200 stream.
    async with harness.stream_client.stream("POST", CHAT, json=chat_body(stream=True), headers=AUTH) as response:
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == "internal_error"
    found = await scrape(harness, AUTH)

    assert value(found, "mlx_router_http_requests_total", route=CHAT, model="", status="401") == 1
    assert value(found, "mlx_router_errors_total", route=CHAT, model="", status="401", code="invalid_api_key") == 1
    assert value(found, "mlx_router_errors_total", route=CHAT, model="", status="404", code="model_not_found") == 1
    assert value(found, "mlx_router_errors_total", route=CHAT, model=MODEL, status="400", code="invalid_request") == 1
    assert value(found, "mlx_router_http_requests_total", route=CHAT, model=MODEL, status="200") == 1
    assert value(found, "mlx_router_errors_total", route=CHAT, model=MODEL, status="500", code="internal_error") == 1
    # Unknown routes share one label, whatever the path.
    assert (await harness.client.get("/v1/nothing/here", headers=AUTH)).status_code == 404
    assert (await harness.client.get("/v1/nothing/else", headers=AUTH)).status_code == 404
    found = await scrape(harness, AUTH)
    assert value(found, "mlx_router_http_requests_total", route="unmatched", model="", status="404") == 2

    status = (await harness.client.get("/v1/status", headers=AUTH)).json()
    errors = status["errors"]
    assert [e["status"] for e in errors][:3] == [404, 404, 500]  # newest first
    stream_error = errors[2]
    assert stream_error["model"] == MODEL and stream_error["code"] == "internal_error"
    assert stream_error["route"] == CHAT and stream_error["message"]
    auth_error = errors[-1]
    assert auth_error["status"] == 401 and KEY not in json.dumps(status)


async def test_evictions_and_worker_restarts(make_app: Any) -> None:
    harness = await make_app(
        FakeEngineScript(crash_after=1, faulty_requests=1),
        defaults={"cache_size": 1},
        models={MODEL: {}, "tiny-b": {"path": MODEL}},
    )
    response = await harness.client.post(CHAT, json=chat_body())
    assert_error(response, 503, code="worker_crashed", message_contains=[CRASH_REASON])
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200  # a fresh worker
    assert (await harness.client.post(CHAT, json=chat_body(model="tiny-b"))).status_code == 200
    found = await scrape(harness)
    assert value(found, "mlx_router_worker_restarts_total", model=MODEL) == 1
    assert value(found, "mlx_router_model_evictions_total", model=MODEL, reason="room") == 1
    assert value(found, "mlx_router_model_loads_total", model=MODEL, result="ok") == 2
    assert value(found, "mlx_router_model_loads_total", model="tiny-b", result="ok") == 1


async def test_failed_loads_are_counted(make_app: Any) -> None:
    harness = await make_app(FakeEngineScript(start_error=EngineError("internal", "broken weights")))
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 503
    found = await scrape(harness)
    assert value(found, "mlx_router_model_loads_total", model=MODEL, result="failed") == 1
    assert value(found, "mlx_router_model_state", model=MODEL, state="failed") == 1


async def test_openmetrics_on_request(make_app: Any) -> None:
    harness = await make_app()
    response = await harness.client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "mlx_router_memory_budget_bytes" in response.text


async def test_each_app_has_its_own_registry(make_app: Any) -> None:
    first = await make_app()
    second = await make_app()
    assert (await first.client.post(CHAT, json=chat_body())).status_code == 200
    assert value(await scrape(first), "mlx_router_generation_requests_total", model=MODEL) == 1
    assert value(await scrape(second), "mlx_router_generation_requests_total", model=MODEL) is None


# --------------------------------------------------------------------------- /v1/status and the page


async def test_status_reports_models_memory_history_and_errors(make_app: Any) -> None:
    harness = await make_app(server={"status_history_seconds": 120, "status_errors_kept": 2})
    assert (await harness.client.post(CHAT, json=chat_body())).status_code == 200
    for _ in range(3):
        assert (await harness.client.post(CHAT, json=chat_body(model="nope"))).status_code == 404
    response = await harness.client.get("/v1/status")
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["status"] == "ok"
    [model] = status["models"]
    assert model["id"] == MODEL and model["state"] == "ready" and model["served"] is True
    memory = status["memory"]
    assert memory["budget_bytes"] == harness.manager.budget_bytes
    assert memory["resident_bytes"] == harness.manager.cost_bytes(harness.manager.entries[MODEL])
    assert memory["pressure"] in ("normal", "moderate", "high", "critical")
    history = status["history"]
    assert history["bucket_seconds"] == BUCKET_SECONDS
    assert len(history["buckets"]) == 120 // BUCKET_SECONDS
    starts = [b["start"] for b in history["buckets"]]
    assert starts == sorted(starts) and starts[-1] <= status["time"] < starts[-1] + BUCKET_SECONDS
    # The request and its four tokens sit in the last bucket or, across a boundary, the one before.
    assert sum(b["requests"] for b in history["buckets"]) == 1
    assert sum(b["tokens"] for b in history["buckets"]) == len(CHUNKS)
    # Only the last two errors are kept.
    assert len(status["errors"]) == 2
    assert all(e["status"] == 404 and "nope" in e["message"] for e in status["errors"])
    assert status["requests"]["total"] == 1


@pytest.mark.parametrize("path", ["/", "/ui"])
async def test_status_page_is_served_without_the_key(make_app: Any, path: str) -> None:
    harness = await make_app(server={"api_key": KEY})
    response = await harness.client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    page = response.text
    assert "/v1/status" in page and "sessionStorage" in page
    # Self-contained: nothing is loaded from another host.
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    # ... but the data it polls needs the key.
    assert_error(await harness.client.get("/v1/status"), 401, code="invalid_api_key")
    assert (await harness.client.get("/v1/status", headers=AUTH)).status_code == 200
