"""The router's own cost per streamed token, with no model in the loop.

Usage: PYTHONPATH=. python docs/perf/probes/router_chunks.py [--streams 1,32,128] [--seconds 6]
       [--max-tokens 256] [--chunk-delay 0] [--burst 1] [--profile FILE]

A child process serves the real app (``create_app``: every route and middleware, uvicorn over a
real socket) whose model is the scripted fake engine of the API tests (``tests/fakes.py``),
scripted to emit its chunks as fast as the event loop runs them (``--chunk-delay`` seconds
between chunks otherwise), one per step, or ``--burst`` back to back: a worker that is ahead of
the router, whose step messages reach it several at a time. Nothing generates text: what the child spends is the router's work
per token (runner, converters, serialization, SSE framing, ASGI, h11) plus the fake's own small
cost of making a ``GenerationChunk``.

This process drives ``N`` concurrent clients over raw sockets for ``--seconds``; each sends
streaming chat requests one after another and reads each response up to ``data: [DONE]``. A
token is a content chunk received. Printed per ``N``: tokens/s delivered and the child's CPU
seconds (user + system, all its threads, read with psutil) per 1,000 tokens; the clients'
CPU is this process's and is not counted. ``--profile FILE`` writes the child's cProfile
statistics (for attribution only: profiling slows it).
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
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

MODEL = "tiny-llama"
TOKEN = "tok"
"""Every chunk's text: a content chunk carries ``"content":"tok"``."""


def serve(models: str, listener: socket.socket, chunks: int, chunk_delay: float, burst: int, profile: str | None) -> None:
    import uvicorn

    from mlx_router.api.app import create_app
    from mlx_router.config.settings import Settings
    from mlx_router.manager.manager import MLXModelManager
    from tests.fakes import FakeEngineScript, fake_client_factory

    settings = Settings.model_validate(
        {
            "defaults": {"model_directory": models, "embedded_model": False, "max_tokens": chunks},
            "server": {"log_file": None},
            "models": {MODEL: {"max_batch_size": 512, "max_queue": 512}},
        }
    )
    script = FakeEngineScript(chunks=(TOKEN,) * chunks, chunk_delay=chunk_delay, chunks_per_step=burst)
    manager = MLXModelManager(settings, client_factory=fake_client_factory(script))
    app = create_app(settings, manager=manager)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    import cProfile

    profiler = cProfile.Profile() if profile else None
    try:
        if profiler is None:
            server.run(sockets=[listener])
        else:
            profiler.runcall(server.run, sockets=[listener])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that stopped it
        pass
    if profiler is not None and profile:
        profiler.dump_stats(profile)


async def stream_once(port: int, body: bytes) -> int:
    """One streaming chat request, read up to ``data: [DONE]``; its content chunks."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    parts = []
    tail = b""
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise RuntimeError("connection closed before data: [DONE]")
            parts.append(data)
            if b"data: [DONE]" in tail + data:
                break
            tail = data[-16:]
    finally:
        writer.close()
    received = b"".join(parts)
    if b" 200 OK" not in received[:20]:
        raise RuntimeError(received[:400].decode(errors="replace"))
    return received.count(b'"content":"%s"' % TOKEN.encode())


async def drive(port: int, streams: int, seconds: float, max_tokens: int) -> tuple[int, int, float]:
    """``streams`` clients in a loop until ``seconds`` pass; (tokens, requests, wall seconds)."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": max_tokens}
    ).encode()
    tokens = requests = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal tokens, requests
        while time.perf_counter() < end:
            got = await stream_once(port, body)
            if got != max_tokens:
                raise RuntimeError(f"expected {max_tokens} tokens, got {got}")
            tokens += got
            requests += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(streams)))
    return tokens, requests, time.perf_counter() - started


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,32,128", help="concurrent clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per stream count")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per request")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="the fake's seconds between chunks")
    parser.add_argument("--burst", type=int, default=1, help="chunks the fake delivers back to back")
    parser.add_argument("--profile", help="write the server's cProfile statistics here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        listener = socket.socket(fileno=args.fd)
        serve(args.serve, listener, args.max_tokens, args.chunk_delay, args.burst, args.profile)
        return

    from mlx_router.fabricate import make_tiny_llm

    with tempfile.TemporaryDirectory() as models:
        make_tiny_llm(Path(models) / MODEL)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        port = listener.getsockname()[1]
        command = [sys.executable, __file__, "--serve", models, "--fd", str(listener.fileno())]
        command += ["--max-tokens", str(args.max_tokens), "--chunk-delay", str(args.chunk_delay), "--burst", str(args.burst)]
        command += ["--profile", args.profile] if args.profile else []
        child = subprocess.Popen(command, pass_fds=[listener.fileno()], env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            server = psutil.Process(child.pid)
            asyncio.run(drive(port, 1, 1.0, args.max_tokens))  # loads the fake model, warms up
            print(f"router_chunks: {args.max_tokens} tokens per request, chunk delay {args.chunk_delay:g} s, "
                  f"{args.burst} chunk(s) per fake step, "
                  f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
            for streams in (int(s) for s in args.streams.split(",")):
                before = cpu_seconds(server)
                tokens, requests, wall = asyncio.run(drive(port, streams, args.seconds, args.max_tokens))
                cpu = cpu_seconds(server) - before
                print(
                    f"N={streams:4d}: {tokens / wall:9.0f} tokens/s  router CPU {cpu * 1e6 / tokens:7.1f} ms per 1,000 "
                    f"tokens  ({tokens} tokens, {requests} requests, {wall:.1f} s, router busy {cpu / wall:.0%})",
                    flush=True,
                )
        finally:
            child.send_signal(2)
            child.wait(30)


if __name__ == "__main__":
    main()
