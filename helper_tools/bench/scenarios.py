"""Scenarios: what a run measures on a started server besides its rounds of concurrent streams.

Each scenario is a function ``(run, server, model) -> None`` that writes its result into
``run.report``, registered in :data:`SCENARIOS` with the systems it runs against. Its name is a
phase of the CLI (``--only`` / ``--skip``); ``report.SECTIONS`` prints it.

  prefix      a repeated ~2k-token system prompt: TTFT of the first and second request
  disconnect  a client closes its stream: time until the slot is free, tokens after the close
              (counted by mlx-router's worker: /metrics mlx_router_tokens_after_cancel_total)
  agent       an agent session: 8 turns on a ``--session-tokens`` system prompt, another model
              used in between (the first one swapped out and back), a server restart; TTFT of
              every turn against the first
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helper_tools.bench.client import chat_payload, http_client, stream_chat
from helper_tools.bench.context import Run
from helper_tools.bench.servers import Server

__all__ = ["SCENARIOS", "Scenario", "scenarios_for"]


@dataclass(frozen=True)
class Scenario:
    run: Callable[[Run, Server, str], None]
    """Measures on ``server`` (started, warm) with ``model``; writes into ``run.report``."""
    systems: tuple[str, ...]
    """The phases whose server it runs against: ``server`` (mlx_lm.server), ``router``."""


async def run_prefix(base_url: str, payloads: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    async with http_client(base_url, timeout, 1) as client:
        first = await stream_chat(client, payloads[0], timeout=timeout)
        second = await stream_chat(client, payloads[1], timeout=timeout)
    for s in (first, second):
        if s["error"] or s["first"] is None:
            raise RuntimeError(f"prefix request failed: {s['error']}")
    t1, t2 = first["first"] - first["start"], second["first"] - second["start"]
    return {"first_ttft_s": t1, "second_ttft_s": t2, "second_over_first": t2 / t1,
            "first_prompt_tokens": first["prompt_tokens"], "second_prompt_tokens": second["prompt_tokens"],
            "first_cached_tokens": first["cached_tokens"], "second_cached_tokens": second["cached_tokens"]}


async def cancel_counters(client: Any) -> tuple[float, float]:
    """mlx-router's worker-side counts, summed over models: cancelled sequences, tokens after the close."""
    text = (await client.get("/metrics")).text

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE))

    return total("mlx_router_cancelled_sequences_total"), total("mlx_router_tokens_after_cancel_total")


async def run_disconnect(server: Server, payload: dict[str, Any], read: int, timeout: float) -> dict[str, Any]:
    """Read ``read`` chunks, close, then poll /v1/health until no sequence is left, and /metrics
    until the worker has counted the tokens it generated after the close."""
    import psutil

    async with http_client(server.base_url, timeout, 2) as client:
        before = await cancel_counters(client)
        s = await stream_chat(client, payload, stop_after=read, timeout=timeout)
        if s["error"] or "closed_at" not in s:
            raise RuntimeError(f"disconnect stream failed: {s['error'] or 'ended before the close'}")
        free_at, pid = None, None
        while time.perf_counter() - s["closed_at"] < 30:
            models = (await client.get("/v1/health")).json().get("loaded_models") or []
            pid = next((m.get("pid") for m in models), pid)
            if sum(m.get("sequences", 0) + m.get("in_flight", 0) for m in models) == 0:
                free_at = time.perf_counter()
                break
            await asyncio.sleep(0.005)
        counted = None
        for _ in range(100):
            after = await cancel_counters(client)
            if after[0] > before[0]:
                counted = int(after[1] - before[1])
                break
            await asyncio.sleep(0.05)
    step = (s["last"] - s["first"]) / max(1, s["chunks"] - 1)
    free_after = free_at - s["closed_at"] if free_at is not None else None
    cpu = None
    with contextlib.suppress(Exception):  # a worker still generating would show ~100% or more
        cpu = psutil.Process(pid).cpu_percent(interval=1.0)
    return {"chunks_read": s["chunks"], "step_s": step, "slot_free_after_s": free_after,
            "tokens_after_close": counted,
            "estimated_extra_tokens": math.ceil(free_after / step) + 1 if free_after is not None and step > 0 else None,
            "worker_cpu_percent_after": cpu,
            "method": "tokens_after_close: counted by the worker (tokens generated beyond the last chunk the "
                      "router passed on); estimated_extra_tokens: time from close until /v1/health shows no "
                      "sequence, divided by the decode step time, plus the step running when the cancel arrives"}


def prefix(run: Run, server: Server, model: str) -> None:
    payloads = [chat_payload(model, m, 8, run.eos_bias) for m in run.prefix]
    run.report["prefix"][server.name] = asyncio.run(run_prefix(server.base_url, payloads, run.args.request_timeout))


def disconnect(run: Run, server: Server, model: str) -> None:
    args = run.args
    payload = chat_payload(model, run.workload.user(args.prompt_tokens, "disconnect"), max(256, 4 * args.max_tokens),
                           run.eos_bias)
    run.report["disconnect"] = asyncio.run(run_disconnect(server, payload, 8, args.request_timeout))


AGENT_PLAN = ("cold", "stays", "stays", "stays", "after swap", "stays", "after restart", "stays")
"""What happened before each turn of the agent session."""


async def _agent_turn(base_url: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    async with http_client(base_url, timeout, 1) as client:
        s = await stream_chat(client, payload, timeout=timeout)
    if s["error"] or s["first"] is None:
        raise RuntimeError(f"agent turn failed: {s['error']}")
    return {"ttft_s": s["first"] - s["start"], "prompt_tokens": s["prompt_tokens"], "cached_tokens": s["cached_tokens"]}


def _admin(server: Server, action: str, model: str, timeout: float) -> float:
    import httpx

    started = time.perf_counter()
    response = httpx.post(f"{server.base_url}/v1/admin/models/{model}/{action}", timeout=timeout)
    response.raise_for_status()
    return time.perf_counter() - started


def agent(run: Run, server: Server, model: str) -> None:
    """8 turns on one long system prompt; before turn 5 another model takes the only slot, before
    turn 7 the server restarts. Each turn resends the whole conversation, as agents do."""
    args, timeout = run.args, run.args.request_timeout
    system = {"role": "system", "content": run.workload.system(args.session_tokens, "agent-session")}
    history: list[dict[str, str]] = [system]
    turns: list[dict[str, Any]] = []
    events: dict[str, float] = {}
    # Filled as the session goes, so that an interrupted run still reports the turns it measured.
    run.report["agent"] = {"session_tokens": args.session_tokens, "turns": turns}
    for n, before in enumerate(AGENT_PLAN, start=1):
        if before == "after swap":
            _admin(server, "unpin", model, timeout)
            other = chat_payload(OTHER_MODEL, [{"role": "user", "content": "Summarise the last change."}], 8, [])
            events["other_model_s"] = asyncio.run(_agent_turn(server.base_url, other, timeout))["ttft_s"]
            events["reload_s"] = _admin(server, "load", model, timeout)
        elif before == "after restart":
            server.stop()
            events["restart_s"] = server.start(args.start_timeout)
            events["reload_after_restart_s"] = _admin(server, "load", model, timeout)
        history.append({"role": "user", "content": f"Turn {n}: read the tools above and do step {n} of the plan."})
        payload = chat_payload(model, list(history), 16, run.eos_bias)
        turn = asyncio.run(_agent_turn(server.base_url, payload, timeout))
        turn.update(turn=n, before=before, over_first=turn["ttft_s"] / (turns[0]["ttft_s"] if turns else turn["ttft_s"]))
        turns.append(turn)
        run.report["agent"].update(events)
        history.append({"role": "assistant", "content": f"Done with step {n}."})
        print(f"  agent turn {n} ({before}): TTFT {turn['ttft_s'] * 1000:.0f} ms, "
              f"{turn['cached_tokens']} of {turn['prompt_tokens']} cached", flush=True)


OTHER_MODEL = "bench-other"
"""The second model of the router's configuration (a tiny one), which the agent session uses in between."""


SCENARIOS: dict[str, Scenario] = {
    "prefix": Scenario(prefix, systems=("server", "router")),
    "disconnect": Scenario(disconnect, systems=("router",)),
    "agent": Scenario(agent, systems=("router",)),
}
"""Every scenario, in the order a phase runs them."""


def scenarios_for(system: str, phases: list[str]) -> list[Scenario]:
    """The scenarios selected in ``phases`` that run against ``system``, in order."""
    return [s for name, s in SCENARIOS.items() if name in phases and system in s.systems]
