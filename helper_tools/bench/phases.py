"""The phases that measure a server: mlx_lm.server and mlx-router, each started once, warmed,
driven with one set of rounds per concurrency level, then given its scenarios."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from helper_tools.bench.client import chat_payload, run_round
from helper_tools.bench.context import Run
from helper_tools.bench.report import fmt
from helper_tools.bench.scenarios import scenarios_for
from helper_tools.bench.servers import Server, mlx_lm_server, router_server
from helper_tools.bench.stats import median_round, ratio

__all__ = ["drive_server", "phase_router", "phase_server", "wait_warm"]


def drive_server(run: Run, server: Server, key: str, model: str) -> None:
    """Start ``server``; time its first request and, once its idle warm-up is over, a second
    one; then ``--repeat`` rounds per concurrency (the median is kept)."""
    args, report, bias = run.args, run.report, run.eos_bias
    report["phases"][key]["startup_s"] = server.start(args.start_timeout)
    ttfts = []
    for n in (1, 2):
        if n == 2:
            warmup_s = wait_warm(server, args.start_timeout)
        one = [chat_payload(model, m, 8, bias) for m in run.workload.round(1, args.prompt_tokens, f"warm{n}-{key}")]
        ttfts.append(asyncio.run(run_round(server.base_url, one, args.request_timeout)).get("ttft_p50_s"))
    report.setdefault("first_request", {})[server.name] = {
        "first_ttft_s": ttfts[0], "second_ttft_s": ttfts[1], "first_over_second": ratio(ttfts[0], ttfts[1]),
        "idle_warmup_s": warmup_s}
    report["runs"][key] = {}
    for c in args.concurrency:
        warmups = [chat_payload(model, m, 4, bias) for m in run.warmups[c]]
        asyncio.run(run_round(server.base_url, warmups, args.request_timeout))
        rounds = []
        for messages in run.prompts[c]:
            payloads = [chat_payload(model, m, args.max_tokens, bias, args.temperature) for m in messages]
            rounds.append(asyncio.run(run_round(server.base_url, payloads, args.request_timeout)))
        report["runs"][key][str(c)] = median_round(rounds)
        print(f"  {server.name} {c} stream(s): {fmt(report['runs'][key][str(c)]['aggregate_tps'])} tok/s", flush=True)


def wait_warm(server: Server, timeout: float) -> float | None:
    """Seconds until no model of ``server`` is preparing prefill widths in idle time (mlx-router's
    ``/v1/health`` ``warming``); None for a server that does not say (mlx_lm.server)."""
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        response = httpx.get(f"{server.base_url}/v1/health", timeout=10)
        if response.status_code != 200:
            return None
        models = response.json().get("loaded_models") or []
        if not any("warming" in m for m in models):
            return None
        if not any(m["warming"] for m in models):
            return time.perf_counter() - started
        time.sleep(0.05)
    raise RuntimeError(f"the idle warm-up did not end within {timeout:.0f} s")


def _record_memory(run: Run, server: Server, extra: dict[str, Any] | None = None) -> None:
    sampler = server.sampler
    if sampler is not None:
        run.report["memory"][server.name] = {"peak_rss_mb": sampler.peak_rss / 2**20,
                                             "peak_gpu_mb": sampler.peak_gpu_mb, **(extra or {})}


def phase_server(run: Run) -> None:
    server, model = mlx_lm_server(run), "default_model"
    try:
        drive_server(run, server, "server", model)
        for scenario in scenarios_for("server", run.args.phases):
            scenario.run(run, server, model)
    finally:
        server.stop()
        _record_memory(run, server)


def phase_router(run: Run) -> None:
    """Rounds when ``router`` is a phase, then the router's scenarios, on one server."""
    import httpx

    server, model, report = router_server(run), run.model_path.name, run.report
    health: dict[str, Any] = {}
    try:
        if "router" in run.args.phases:
            drive_server(run, server, "router", model)
        else:
            report["phases"]["router"]["startup_s"] = server.start(run.args.start_timeout)
        for scenario in scenarios_for("router", run.args.phases):
            scenario.run(run, server, model)
        health = httpx.get(f"{server.base_url}/v1/health", timeout=10).json()
        report["router_health"] = health
    finally:
        server.stop()
        weight = next((m.get("weight_gb") for m in health.get("loaded_models") or []), None)
        _record_memory(run, server, {"weight_gb": weight})
