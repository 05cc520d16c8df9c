"""The servers under test as subprocesses: started on a free port, ready when ``/health``
answers, stopped with every process they started, their memory sampled all along."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from helper_tools.bench import REPO_ROOT
from helper_tools.bench.context import Run

__all__ = ["Server", "TreeSampler", "free_port", "mlx_lm_server", "router_server"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TreeSampler(threading.Thread):
    """Peak RSS of a process and its descendants (and their GPU memory, via nvidia-smi)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = 0
        self.peak_gpu_mb: float | None = None
        self.stopped = threading.Event()
        self.smi = shutil.which("nvidia-smi")

    def pids(self) -> list[Any]:
        import psutil

        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        return []

    def run(self) -> None:
        tick = 0
        while not self.stopped.wait(self.interval):
            procs = self.pids()
            rss = 0
            for proc in procs:
                with contextlib.suppress(Exception):
                    rss += proc.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)
            tick += 1
            if self.smi and tick % 5 == 0:
                self._sample_gpu(self.smi, {p.pid for p in procs})

    def _sample_gpu(self, smi: str, pids: set[int]) -> None:
        with contextlib.suppress(Exception):
            out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout
            used = sum(float(mb) for pid, mb in (line.split(",") for line in out.splitlines() if "," in line)
                       if int(pid) in pids)
            self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, used)


class Server:
    """A server subprocess: started on a free port, ready when ``/health`` answers 200."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str], log: Path, cwd: Path) -> None:
        self.name, self.cmd, self.env, self.log, self.cwd = name, cmd, env, log, cwd
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: TreeSampler | None = None

    def start(self, timeout: float) -> float:
        import httpx

        started = time.perf_counter()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.sampler = TreeSampler(self.proc.pid)
        self.sampler.start()
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the server and every descendant it left behind."""
        if self.sampler is not None:
            self.sampler.stopped.set()
        if self.proc is None:
            return
        children = self.sampler.pids()[1:] if self.sampler else []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for child in children:
            with contextlib.suppress(Exception):
                if child.is_running():
                    child.kill()


def mlx_lm_server(run: Run) -> Server:
    args, port = run.args, free_port()
    cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(run.model_path), "--host", "127.0.0.1",
           "--port", str(port), "--max-tokens", str(args.max_tokens), "--log-level", "WARNING",
           "--decode-concurrency", str(max(32, *args.concurrency)), "--prompt-concurrency", "8"]
    return Server("mlx_lm.server", cmd, port, run.mlx_env, run.work / "mlx_lm_server.log", run.work)


PREFIX_CACHE_BYTES = 4 << 30
"""The router's in-memory prefix cache per model: an agent session of 16k tokens keeps 0.5 GB of
KV on Llama-3.2-1B and 2 GB on Llama-3.1-8B (the default is 1 GiB)."""


def router_server(run: Run) -> Server:
    """mlx-router serving the model (pinned, alone: ``cache_size`` 1), with the tiny model as a
    second one when the agent scenario runs, and its prefix cache's disk tier in the work dir."""
    args, port, model_path = run.args, free_port(), run.model_path
    config: dict[str, Any] = {
        "defaults": {"model": model_path.name, "model_directory": str(model_path.parent), "embedded_model": False,
                     "max_batch_size": max(32, *args.concurrency), "max_queue": 256, "warmup_tokens": 4,
                     "timeout": args.request_timeout, "max_tokens": args.max_tokens, "cache_size": 1,
                     "prefix_cache_bytes": PREFIX_CACHE_BYTES,
                     "prefix_cache_directory": str(run.work / "prefix-cache")},
        "server": {"port": port, "log_file": str(run.work / "router.log")},
    }
    config["defaults"].update(dict(args.router_default))
    if "agent" in args.phases:
        from helper_tools.bench.models import make_model
        from helper_tools.bench.scenarios import OTHER_MODEL

        config["models"] = {OTHER_MODEL: {"path": str(make_model("tiny", args.cache_dir, args.phase_timeout))},
                            # --make writes configs of 8192 positions; the session needs more.
                            model_path.name: {"context_length": max(8192, 2 * args.session_tokens)}}
    config_path = run.work / "router-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_ROUTER_") and k != "MLX_MODEL_DIR"}
    cmd = [sys.executable, str(REPO_ROOT / "main.py"), "--config", str(config_path)]
    return Server("mlx-router", cmd, port, env, run.work / "router.stdout.log", run.work)
