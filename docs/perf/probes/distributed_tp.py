"""Tensor parallel on two GPUs (NCCL) against one GPU, and against mlx_lm.server started the same
way: decode tok/s and time to first token at 1, 8 and 32 concurrent streams.

Needs a Linux machine with two CUDA GPUs, the project's venv with mlx[cuda], and an mlx-lm model
folder (an 8B: e.g. Meta-Llama-3.1-8B-Instruct in bf16 or 4-bit). Run from the repository root:

    .venv/bin/python docs/perf/probes/distributed_tp.py --model /models/Llama-3.1-8B-Instruct \\
        --out docs/perf/h200x2-8b-tp.json

Four servers, one after the other, each given the same requests (temperature 0, EOS suppressed
with logit_bias, so every stream generates exactly --max-tokens tokens):

- ``router-1gpu``: mlx-router, the model in one worker (CUDA_VISIBLE_DEVICES=0);
- ``router-tp2``: mlx-router, the model served by a group of two ranks
  (``distributed: {"hosts": ["127.0.0.1", "127.0.0.1"], "backend": "nccl", "strategy": "tensor"}``,
  so mlx.launch gives rank r GPU r);
- ``mlx_lm-1gpu``: ``mlx_lm.server`` on GPU 0;
- ``mlx_lm-tp2``: ``mlx.launch --backend nccl --hosts 127.0.0.1 -n 2 -- python -m mlx_lm.server``.

On a machine with one GPU, ``--backend ring`` runs both ranks of the ``-tp2`` servers on GPU 0
(NCCL cannot put two ranks on one device): it proves the path, not the speed-up of two GPUs.

Per stream: TTFT (request sent to first content token) and decode rate ((tokens - 1) / (last
token - first token)). Per round: TTFT p50 and p90, aggregate decode tok/s (tokens after each
stream's first, over the time from the first stream's first token to the last stream's last),
the median stream's rate, and wall time. Prints a table; ``--out`` also writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
LAUNCH = "import sys; from mlx._distributed_utils.launch import main; sys.argv[0] = 'mlx.launch'; main()"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "small", "server", "answers", "many", "people", "at", "once"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_index(model: Path) -> None:
    """sharded_load needs model.safetensors.index.json, even for a single weights file."""
    index = model / "model.safetensors.index.json"
    if index.exists():
        return
    weight_map = {}
    for shard in sorted(model.glob("*.safetensors")):
        with shard.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        weight_map.update({name: shard.name for name in header if name != "__metadata__"})
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    print(f"wrote {index}", flush=True)


def eos_bias(model: Path) -> dict[str, int]:
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        path = model / name
        if path.exists():
            value = json.loads(path.read_text()).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    return {str(i): -100 for i in sorted(ids)}


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str], work: Path) -> None:
        self.name, self.cmd, self.env, self.work = name, cmd, env, work
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> float:
        import httpx

        started = time.perf_counter()
        log = (self.work / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {(self.work / f'{self.name}.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever the session left (ranks, launcher)
        except ProcessLookupError:
            pass


def router(name: str, model: Path, work: Path, distributed: dict[str, Any] | None, gpus: str) -> Server:
    port = free_port()
    entry: dict[str, Any] = {"path": str(model)}
    if distributed:
        entry["distributed"] = distributed
    config = {
        "defaults": {"model": "bench", "model_directory": str(model.parent), "embedded_model": False,
                     "max_batch_size": 32, "max_queue": 256, "warmup_tokens": 4, "max_tokens": 4096, "cache_size": 1},
        "server": {"port": port, "log_file": str(work / f"{name}.router.log"), "worker_start_timeout": 900},
        "models": {"bench": entry},
    }
    path = work / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpus)
    return Server(name, [sys.executable, str(REPO / "main.py"), "--config", str(path)], port, env, work)


def mlx_lm(name: str, model: Path, work: Path, ranks: int, backend: str) -> Server:
    port = free_port()
    serve = [sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
             "--decode-concurrency", "32", "--prompt-concurrency", "8", "--max-tokens", "4096"]
    if ranks == 1:
        return Server(name, serve, port, dict(os.environ, CUDA_VISIBLE_DEVICES="0"), work)
    port_flag = "--nccl-port" if backend == "nccl" else "--starting-port"
    launch = [sys.executable, "-c", LAUNCH, "--backend", backend, "--hosts", "127.0.0.1", "-n", str(ranks),
              port_flag, str(free_port()), "--"]
    return Server(name, launch + serve, port, dict(os.environ), work)


async def one_stream(client: Any, payload: dict[str, Any]) -> dict[str, Any]:
    sent, first, last, chunks, tokens, error = time.perf_counter(), None, None, 0, None, None
    async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if "error" in obj:
                error = str(obj["error"])[:200]
                break
            if obj.get("usage"):
                tokens = obj["usage"].get("completion_tokens")
            if any((c.get("delta") or {}).get("content") for c in obj.get("choices") or []):
                last = time.perf_counter()
                first = first or last
                chunks += 1
    tokens = tokens or chunks
    rate = (tokens - 1) / (last - first) if first and last and last > first else None
    return {"ttft": (first - sent) if first else None, "first": first, "last": last, "tokens": tokens,
            "decode_tok_s": rate, "error": error}


async def round_of(url: str, model: str, streams: int, prompt: str, max_tokens: int, bias: dict[str, int]) -> dict[str, Any]:
    import httpx

    payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
               "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "logit_bias": bias}
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(1800, connect=30), limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, payload) for _ in range(streams)))
    wall = time.perf_counter() - started
    ok = [r for r in results if not r.get("error") and r.get("ttft") is not None]
    ttfts = sorted(r["ttft"] for r in ok)
    rates = [r["decode_tok_s"] for r in ok if r["decode_tok_s"]]
    span = max((r["last"] for r in ok), default=0.0) - min((r["first"] for r in ok), default=0.0)
    decoded = sum((r["tokens"] or 1) - 1 for r in ok)
    return {
        "streams": streams,
        "errors": len(results) - len(ok),
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p90_s": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))] if ttfts else None,
        "decode_tok_s_total": decoded / span if span > 0 else None,
        "decode_tok_s_per_stream": statistics.median(rates) if rates else None,
        "tokens": sum(r["tokens"] or 0 for r in ok),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="mlx-lm model folder (an 8B)")
    parser.add_argument("--streams", default="1,8,32", help="concurrent streams per round (default 1,8,32)")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens generated per stream (default 256)")
    parser.add_argument("--prompt-words", type=int, default=400, help="prompt length in words (default 400)")
    parser.add_argument("--servers", default="router-1gpu,router-tp2,mlx_lm-1gpu,mlx_lm-tp2")
    parser.add_argument("--backend", default="nccl",
                        help="nccl (one GPU per rank); ring puts both ranks on GPU 0 (a one-GPU machine) or on a CPU")
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    model = args.model.resolve()
    ensure_index(model)
    bias = eos_bias(model)
    prompt = "Summarize this: " + " ".join(WORDS[i % len(WORDS)] for i in range(args.prompt_words))
    work = Path(tempfile.mkdtemp(prefix="tp-probe-"))
    tp2: dict[str, Any] = {"hosts": ["127.0.0.1", "127.0.0.1"], "backend": args.backend, "strategy": "tensor"}
    if os.environ.get("PYTHONPATH"):  # the ranks' PYTHONPATH is otherwise this checkout alone
        tp2["env"] = {"PYTHONPATH": os.environ["PYTHONPATH"]}
    # NCCL gives rank r GPU r; the ring backend leaves the devices alone, so both ranks share GPU 0.
    tp2_gpus = "0,1" if args.backend == "nccl" else "0"
    makers = {
        "router-1gpu": lambda: router("router-1gpu", model, work, None, "0"),
        "router-tp2": lambda: router("router-tp2", model, work, tp2, tp2_gpus),
        "mlx_lm-1gpu": lambda: mlx_lm("mlx_lm-1gpu", model, work, 1, args.backend),
        "mlx_lm-tp2": lambda: mlx_lm("mlx_lm-tp2", model, work, 2, args.backend),
    }
    report: dict[str, Any] = {"model": str(model), "max_tokens": args.max_tokens, "prompt_words": args.prompt_words, "runs": {}}
    for name in args.servers.split(","):
        server = makers[name]()
        try:
            ready = server.start(args.start_timeout)
            served = "bench" if name.startswith("router") else str(model)
            asyncio.run(round_of(server.url, served, 1, prompt, 8, bias))  # load, compile, warm
            rounds = [asyncio.run(round_of(server.url, served, int(n), prompt, args.max_tokens, bias))
                      for n in args.streams.split(",")]
            report["runs"][name] = {"ready_s": ready, "rounds": rounds}
        except Exception as exc:  # noqa: BLE001 (a server that fails is reported, the others still run)
            report["runs"][name] = {"error": f"{exc.__class__.__name__}: {exc}"[:2000]}
        finally:
            server.stop()
        print(json.dumps({name: report["runs"][name]}, indent=1), flush=True)
    print(f"\n{'server':<14}{'streams':>8}{'TTFT p50 s':>12}{'TTFT p90 s':>12}{'decode tok/s':>14}{'per stream':>12}{'errors':>8}")
    for name, run in report["runs"].items():
        for r in run.get("rounds", []):
            cells = [r["ttft_p50_s"], r["ttft_p90_s"], r["decode_tok_s_total"], r["decode_tok_s_per_stream"]]
            shown = [f"{c:.3f}" if isinstance(c, float) and c < 10 else f"{c:.1f}" if c is not None else "-" for c in cells]
            print(f"{name:<14}{r['streams']:>8}{shown[0]:>12}{shown[1]:>12}{shown[2]:>14}{shown[3]:>12}{r['errors']:>8}")
        if "error" in run:
            print(f"{name:<14} failed: {run['error'][:300]}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(f"\nlogs: {work}")
    return 0 if all("error" not in r for r in report["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
