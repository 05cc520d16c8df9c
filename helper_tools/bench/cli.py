"""Benchmark mlx-router against mlx-lm called directly and against ``mlx_lm.server``.

One run, one model, the same prompts for all three systems:

  direct      mlx-lm in a subprocess of its own: ``stream_generate`` for one stream,
              the loop of ``batch_generate`` (timed per sequence) for every concurrency above 1
  server      ``python -m mlx_lm.server``, driven by N concurrent streaming clients
  router      mlx-router (``python main.py``), driven by the same clients
  prefix      a repeated ~2k-token system prompt: TTFT of the first and second request
              (mlx-router; mlx_lm.server too when its phase runs)
  disconnect  mlx-router: a client closes its stream; the tokens generated after the close (as
              the worker counts them), the time until the slot is free
  agent       mlx-router: an agent session of 8 turns on a --session-tokens system prompt,
              another model used in between and a server restart; each turn's TTFT

Every phase is optional (``--only`` / ``--skip``); a failing phase is recorded in the JSON and the
run goes on. Output: a table on stdout and, with ``--json``, every raw number.

  python helper_tools/benchmark.py --make tiny --concurrency 1,8 --json bench.json
  python helper_tools/benchmark.py --model ~/models/SmolLM2-135M-Instruct --concurrency 1,8,32
  python helper_tools/benchmark.py --make llama-8b-4bit --json gpu.json      # on a GPU host

``--make`` writes a random-weight Llama with realistic shapes (cached under ``--cache-dir``) whose
EOS rows are zero, so greedy decoding never stops early; with ``--model`` the EOS tokens get a
logit bias of -100 everywhere (``--ignore-eos``). Either way every request generates exactly
``--max-tokens`` tokens, which keeps tokens/s comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helper_tools.bench import REPO_ROOT
from helper_tools.bench.context import Run, prepare
from helper_tools.bench.direct import direct_worker, phase_direct
from helper_tools.bench.models import KINDS, make_worker
from helper_tools.bench.phases import phase_router, phase_server
from helper_tools.bench.report import render_report
from helper_tools.bench.scenarios import SCENARIOS, scenarios_for
from helper_tools.bench.stats import compute_ratios, evaluate_targets

__all__ = ["PHASES", "build_parser", "main", "parse_args"]

PHASES = ("direct", "server", "router", *SCENARIOS)
"""Systems measured in rounds, then the scenarios (see scenarios.py)."""


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return levels


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def parse_phases(text: str) -> set[str]:
    names = {x.strip() for x in text.split(",") if x.strip()}
    unknown = names - set(PHASES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    return names


def router_default(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for the router's ``defaults``: VALUE as JSON (a bare word stays a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="an mlx-lm model folder")
    src.add_argument("--make", choices=sorted(KINDS), help="write (once) and use a random-weight model of this shape")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-router-bench"
    p.add_argument("--cache-dir", type=Path, default=cache, help="where --make keeps its models (default: %(default)s)")
    p.add_argument("--concurrency", type=parse_concurrency, default=[1, 8, 32],
                   help="concurrent streams per round, comma-separated (default: 1,8,32)")
    p.add_argument("--prompt-tokens", type=positive, help="prompt length in tokens (default: 64 for tiny, else 512)")
    p.add_argument("--max-tokens", type=positive, default=128, help="tokens generated per request (default: 128)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature of the throughput rounds, unseeded, for all three systems (direct: "
                        "one sampler for the batch); the prefix, disconnect and agent phases stay greedy (default: 0)")
    p.add_argument("--repeat", type=positive, default=1, help="rounds per concurrency, fresh prompts each; the "
                   "round with the median aggregate tok/s is reported, all are in the JSON (default: 1)")
    p.add_argument("--prefix-tokens", type=positive, default=2048,
                   help="shared system prompt of the prefix test (default: 2048)")
    p.add_argument("--session-tokens", type=positive, default=16384,
                   help="system prompt of the agent session (default: 16384)")
    p.add_argument("--router-default", type=router_default, action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of mlx-router's configuration (its defaults section) for this run, VALUE in "
                        "JSON, e.g. buffer_cache_bytes=0; repeatable")
    p.add_argument("--only", type=parse_phases, help="run only these phases (comma-separated)")
    p.add_argument("--skip", type=parse_phases, default=set(), help="skip these phases (comma-separated)")
    p.add_argument("--json", type=Path, help="write every raw number here")
    p.add_argument("--ignore-eos", choices=("auto", "on", "off"), default="auto",
                   help="logit_bias -100 on EOS ids (auto: on for --model, off for --make, whose EOS rows are zero)")
    p.add_argument("--blas-preload", default="auto", help="LD_PRELOAD for the direct phase and mlx_lm.server, as "
                   "mlx-router's CPU workers do: auto (the system OpenBLAS on Linux CPU), none, or a path")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default: 600)")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds for a server to become ready")
    p.add_argument("--phase-timeout", type=float, default=1800.0, help="seconds for the direct subprocess")
    p.add_argument("--work-dir", type=Path, help="logs and configs (default: a new temporary folder, kept)")
    p.add_argument("--make-worker", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--direct-worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.model or args.make or args.make_worker or args.direct_worker):
        parser.error("one of --model or --make is required")
    if args.prompt_tokens is None:
        args.prompt_tokens = 64 if args.make == "tiny" else 512
    if not 0.0 <= args.temperature <= 2.0:
        parser.error(f"--temperature must be between 0 and 2, not {args.temperature:g}")
    args.phases = [p for p in PHASES if p in (args.only or set(PHASES)) and p not in args.skip]
    return args


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    for dist in ("mlx", "mlx-lm", "mlx-cuda", "mlx-cpu", "mlx-metal"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[f"{dist}_version"] = metadata.version(dist)
    with contextlib.suppress(Exception):
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 1e9, 1)
    with contextlib.suppress(Exception):  # which mlx-router was measured
        git = ["git", "-C", str(REPO_ROOT)]
        info["git_commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            timeout=10, check=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run([*git, "status", "--porcelain", "mlx_router", "main.py"],
                                                capture_output=True, text=True, timeout=10, check=True).stdout.strip())
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            info["gpus"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                          capture_output=True, text=True, timeout=10,
                                          check=False).stdout.strip().splitlines()
    return info


def run_phase(report: dict[str, Any], name: str, fn: Callable[[], None]) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] phase {name} ...", flush=True)
    started = time.perf_counter()
    entry = report["phases"].setdefault(name, {})
    try:
        fn()
        entry["ok"] = True
    except BaseException as exc:  # recorded; the next phase still runs (Ctrl-C still stops the run)
        entry.update(ok=False, error=f"{exc.__class__.__name__}: {exc}"[:2000])
        print(f"  phase {name} failed: {entry['error'][:500]}", flush=True)
        if isinstance(exc, KeyboardInterrupt):
            raise
    entry["seconds"] = time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_worker:
        return make_worker(args.make_worker[0], Path(args.make_worker[1]))
    if args.direct_worker:
        return direct_worker(Path(args.direct_worker[0]), Path(args.direct_worker[1]))
    started = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mlx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine_info(), "phases": {}, "runs": {}, "prefix": {}, "memory": {},
                              "settings": {"concurrency": args.concurrency, "prompt_tokens": args.prompt_tokens,
                                           "repeat": args.repeat,
                                           "max_tokens": args.max_tokens, "temperature": args.temperature,
                                           "prefix_tokens": args.prefix_tokens,
                                           "session_tokens": args.session_tokens,
                                           "phases": args.phases, "work_dir": str(work)}}
    print(f"work dir (logs, configs): {work}", flush=True)
    runs: list[Run] = []
    try:  # an interrupted run (Ctrl-C, `timeout -s INT`) still reports what it measured
        run_phase(report, "prepare", lambda: runs.append(prepare(args, report, work)))
        if runs:
            run = runs[0]
            if "direct" in args.phases:
                run_phase(report, "direct", lambda: phase_direct(run))
            if "server" in args.phases:
                run_phase(report, "server", lambda: phase_server(run))
            if "router" in args.phases or scenarios_for("router", args.phases):
                run_phase(report, "router", lambda: phase_router(run))
    except KeyboardInterrupt:
        report["interrupted"] = True
    report["ratios"] = compute_ratios(report["runs"])
    report["targets"] = evaluate_targets(report)
    report["total_seconds"] = time.perf_counter() - started
    print(render_report(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0 if all(p.get("ok") for p in report["phases"].values()) else 1
