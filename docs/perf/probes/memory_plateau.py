"""Does the server's memory plateau? Rounds of bad input, disconnects and streams, measured.

Starts ``main.py`` on a tiny random-weight model (built on the spot) with the built-in defaults
(plus ``--set`` overrides), then runs ``--rounds`` rounds of: 300 malformed requests (ten
kinds: not JSON, wrong types, unknown model, huge strings, bad image data, ...), 20 streams
dropped by the client after their first chunk, and 48 streams of ``--tokens`` tokens (each with
its own prompt, so the prefix cache keeps filling). After warm-up and after every round it prints
the resident memory (RSS) of the router, of the model's worker, of the spare worker and of the
whole process tree (workers told apart by the pids ``/v1/health`` reports).

Run from the repository root::

    .venv/bin/python docs/perf/probes/memory_plateau.py [--rounds 6] [--set defaults.prefix_cache_bytes=0]

A flat tree after the first round or two is the goal; the figures in the commit that added
this probe compare the defaults before and after the change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from mlx_router.fabricate import make_tiny_llm

MB = 1024 * 1024
CHAT = "/v1/chat/completions"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def malformed(i: int) -> tuple[dict[str, str], bytes]:
    """One of ten kinds of bad request, by index."""
    json_type = {"content-type": "application/json"}
    kinds: list[Any] = [
        b"{not json",
        json.dumps([1, 2, 3]).encode(),
        json.dumps({"model": "tiny", "messages": "hello"}).encode(),
        json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 200_000}], "max_tokens": -1}).encode(),
        json.dumps({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}).encode(),
        json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!notbase64"}}]}]}).encode(),
        json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(),
        json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 10_000}).encode(),
        b'{"model": "tiny", "messages": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
    ]
    return json_type, kinds[i % len(kinds)]


def tree_rss(pid: int, health: dict[str, Any]) -> dict[str, float]:
    """RSS in MB of the router, the model's worker, the spare worker and the whole tree."""
    root = psutil.Process(pid)
    worker_pids = {m["pid"] for m in health.get("loaded_models", [])}
    out = {"router": root.memory_info().rss / MB, "worker": 0.0, "spare": 0.0, "tree": 0.0}
    for child in root.children(recursive=True):
        try:
            rss = child.memory_info().rss / MB
        except psutil.NoSuchProcess:
            continue
        if child.pid in worker_pids:
            out["worker"] += rss
        elif child.pid == health.get("spare_worker_pid"):
            out["spare"] += rss
        out["tree"] += rss
    out["tree"] += out["router"]
    return out


def row(label: str, rss: dict[str, float], note: str = "") -> str:
    return f"{label:>10} {rss['router']:10.0f} {rss['worker']:10.0f} {rss['spare']:9.0f} {rss['tree']:8.0f}  {note}"


async def one_round(client: httpx.AsyncClient, round_no: int, tokens: int) -> dict[str, int]:
    counts = {"malformed_5xx": 0, "stream_errors": 0, "resets": 0}
    sem = asyncio.Semaphore(16)

    async def bad(i: int) -> None:
        headers, body = malformed(i)
        async with sem:
            response = await client.post(CHAT, content=body, headers=headers)
        counts["malformed_5xx"] += response.status_code >= 500

    async def dropped(i: int) -> None:
        body = {"model": "tiny", "stream": True, "max_tokens": 200,
                "messages": [{"role": "user", "content": f"drop {round_no} {i}"}]}
        async with sem, client.stream("POST", CHAT, json=body) as response:
            async for _ in response.aiter_bytes():
                break  # leave after the first chunk

    async def stream(i: int) -> None:
        body = {"model": "tiny", "stream": True, "max_tokens": tokens,
                "messages": [{"role": "user", "content": f"round {round_no} stream {i} " + "words " * (i % 7) * 20}]}
        async with sem, client.stream("POST", CHAT, json=body) as response:
            text = b"".join([chunk async for chunk in response.aiter_bytes()])
        counts["stream_errors"] += response.status_code != 200 or b"[DONE]" not in text

    async def counted(work: Awaitable[None]) -> None:
        try:
            await work
        except httpx.TransportError:  # the connection closed under the request: counted, not fatal
            counts["resets"] += 1

    await asyncio.gather(*(counted(bad(i)) for i in range(300)))
    await asyncio.gather(*(counted(dropped(i)) for i in range(20)))
    await asyncio.gather(*(counted(stream(i)) for i in range(48)))
    return counts


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, raw = item.partition("=")
        section, _, name = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        config.setdefault(section, {})[name] = value
    return config


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_tiny_llm(tmp / "models" / "tiny")
        port = free_port()
        config: dict[str, Any] = {
            "defaults": {"model_directory": str(tmp / "models"), "embedded_model": False, "model": "tiny"},
            "server": {"port": port, "log_file": None},
        }
        for section, values in parse_sets(args.set).items():
            config.setdefault(section, {}).update(values)
        (tmp / "config.json").write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_ROUTER_")}
        process = subprocess.Popen(  # noqa: ASYNC220 (started once, before any request)
            [sys.executable, str(REPO / "main.py"), "--config", str(tmp / "config.json")],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "err.txt").open("wb"),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=120) as client:
                deadline = time.monotonic() + 300
                while True:
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if process.poll() is not None or time.monotonic() > deadline:
                        print((tmp / "err.txt").read_text()[-3000:])
                        return 1
                    await asyncio.sleep(0.2)
                print(f"overrides: {json.dumps(parse_sets(args.set)) if args.set else 'none (built-in defaults)'}")
                print(f"{'after':>10} {'router MB':>10} {'worker MB':>10} {'spare MB':>9} {'tree MB':>8}  errors")
                print(row("start", tree_rss(process.pid, (await client.get("/v1/health")).json())))
                for round_no in range(1, args.rounds + 1):
                    counts = await one_round(client, round_no, args.tokens)
                    await asyncio.sleep(1.0)
                    rss = tree_rss(process.pid, (await client.get("/v1/health")).json())
                    print(row(f"round {round_no}", rss, str(counts)), flush=True)
        finally:
            process.terminate()
            process.wait(30)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=48, help="tokens per completed stream")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON", help="config override")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
