"""A served model's start: its load time, its worker's memory and the first requests after it.

Usage: python docs/perf/probes/served_start.py MODEL_DIR [--set KEY=VALUE ...] [--after SECONDS]
                                                [--with-path DIR] [--runs N]

Starts ``main.py`` serving MODEL_DIR (``defaults`` keys from ``--set``, VALUE in JSON), waits
until it answers, then ``--after`` seconds more, and times two chat requests of ~120 tokens.
Prints the load time from the log (``Loaded … in``), the worker's resident memory and both
request times, per run. ``--with-path DIR`` appends DIR to the server's ``sys.path`` (workers
inherit it): a folder holding PyTorch shows what an installed PyTorch costs a worker.

  python docs/perf/probes/served_start.py ~/models/tiny-llama --with-path /tmp/torchsite
  python docs/perf/probes/served_start.py ~/models/tiny-llama --with-path /tmp/torchsite --set worker_pytorch=true
  python docs/perf/probes/served_start.py ~/models/tiny-llama --set prefill_buckets=true --set idle_work_delay=0 --after 0.25
"""

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_run(args: argparse.Namespace, work: Path) -> str:
    model = Path(args.model).resolve()
    port = free_port()
    defaults = {"model": model.name, "model_directory": str(model.parent), "embedded_model": False,
                "spare_worker": False, "warmup_tokens": 4, "prefix_cache_directory": str(work / "kv")}
    for item in args.set:
        key, _, value = item.partition("=")
        defaults[key] = json.loads(value)
    config = work / "config.json"
    config.write_text(json.dumps({"defaults": defaults, "server": {"port": port, "log_file": str(work / "router.log")}}))
    main = [str(ROOT / "main.py"), "--config", str(config)]
    if args.with_path:
        launcher = f"import runpy, sys; sys.path.append({args.with_path!r}); sys.argv = {main!r}; " \
                   "runpy.run_path(sys.argv[0], run_name='__main__')"
        command = [sys.executable, "-c", launcher]
    else:
        command = [sys.executable, *main]
    with (work / "stdout.txt").open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        time.sleep(args.after)
        times = []
        with httpx.Client(base_url=base, timeout=120) as http:
            for i in range(2):
                body = {"model": model.name, "max_tokens": 2,
                        "messages": [{"role": "user", "content": f"hello {i} " * 40}]}
                started = time.perf_counter()
                http.post("/v1/chat/completions", json=body).raise_for_status()
                times.append(f"{(time.perf_counter() - started) * 1000:.1f}")
            pid = http.get("/v1/health").json()["loaded_models"][0]["pid"]
        rss = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
        loaded = re.search(r"Loaded \S+ in ([\d.]+) s", (work / "router.log").read_text())
        return (f"load {loaded.group(1) if loaded else '?'} s, worker RSS "
                f"{int(rss.group(1)) // 1024 if rss else '?'} MB, requests {' / '.join(times)} ms")
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--after", type=float, default=0.0)
    parser.add_argument("--with-path")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(f"settings {args.set or '-'}, after {args.after} s, extra path {args.with_path or '-'}")
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="served-start-") as work:
            print(f"  run {run + 1}: {one_run(args, Path(work))}", flush=True)


if __name__ == "__main__":
    main()
