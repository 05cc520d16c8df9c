"""mlx-lm called directly, the reference the servers are measured against.

It runs in a subprocess of its own (``benchmark.py --direct-worker SPEC OUT``) so that its MLX
memory is gone before the servers start: ``stream_generate`` for one stream, the loop of
``batch_generate`` (timed per sequence) for every concurrency above 1.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helper_tools.bench import SCRIPT
from helper_tools.bench.context import Run
from helper_tools.bench.stats import median_round, summarize_streams

__all__ = ["direct_worker", "phase_direct"]


def direct_worker(spec_path: Path, out_path: Path) -> int:
    """Runs in its own process so that its MLX memory is gone before the servers start."""
    import resource

    import mlx.core as mx
    from mlx_lm import batch_generate, load, stream_generate
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    spec = json.loads(spec_path.read_text())
    model, tokenizer = load(spec["model"])[:2]
    bias = {int(t): -100.0 for t in spec["eos_bias"]}
    procs = make_logits_processors(logit_bias=bias) if bias else None
    extra: dict[str, Any] = {"logits_processors": procs} if procs else {}
    sampled = {"sampler": make_sampler(temp=spec["temperature"])} if spec.get("temperature") else {}

    def ids(messages: list[dict[str, str]]) -> list[int]:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    result: dict[str, Any] = {"device": str(mx.default_device()), "runs": {}}
    with contextlib.suppress(Exception):
        result["device_info"] = {k: v for k, v in mx.device_info().items() if isinstance(v, (int, float, str))}
    for _ in stream_generate(model, tokenizer, ids(spec["warmup"][0]), max_tokens=8, **extra):
        pass
    for c, level in spec["rounds"].items():
        if int(c) > 1:
            batch_generate(model, tokenizer, [ids(m) for m in level["warmup"]], max_tokens=4, **extra)
        measured, n = [], spec["max_tokens"]
        for messages in level["prompts"]:
            prompts = [ids(m) for m in messages]
            if int(c) == 1:
                measured.append(_direct_single(model, tokenizer, prompts[0], n, stream_generate, extra | sampled))
            else:
                measured.append(_direct_batch(model, tokenizer, prompts, n, extra | sampled))
            measured[-1]["prompt_tokens"] = [len(prompts[0])]
        result["runs"][c] = median_round(measured)
    result["memory"] = {"mlx_peak_gb": mx.get_peak_memory() / 1e9, "mlx_active_gb": mx.get_active_memory() / 1e9,
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out_path.write_text(json.dumps(result))
    return 0


def _direct_single(model: Any, tokenizer: Any, prompt: list[int], max_tokens: int, stream_generate: Any,
                   extra: dict[str, Any]) -> dict[str, Any]:
    times, last = [], None
    start = time.perf_counter()
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, **extra):
        times.append(time.perf_counter())
    if last is None:
        raise RuntimeError("stream_generate produced no token")
    summary = summarize_streams([{"start": start, "first": times[0], "last": times[-1], "tokens": len(times)}], start)
    summary.update(prefill_s=times[0] - start, mlx_lm_prompt_tps=last.prompt_tps,
                   mlx_lm_generation_tps=last.generation_tps, mlx_lm_generation_tokens=last.generation_tokens)
    return summary


def _direct_batch(model: Any, tokenizer: Any, prompts: list[list[int]], max_tokens: int,
                  extra: dict[str, Any]) -> dict[str, Any]:
    """``batch_generate``'s own loop (BatchGenerator.insert, then next_generated until done), with
    each sequence's first and last token timed so the numbers mean what they mean for the servers."""
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(model, stop_tokens=[[t] for t in tokenizer.eos_token_ids],
                         completion_batch_size=max(32, len(prompts)), **extra)
    start = time.perf_counter()
    uids = gen.insert(prompts, [max_tokens] * len(prompts))
    streams: dict[int, dict[str, Any]] = {uid: {"start": start, "first": None, "last": None, "tokens": 0, "error": None} for uid in uids}
    with gen.stats() as stats:
        while responses := gen.next_generated():
            now = time.perf_counter()
            for r in responses:
                if r.finish_reason != "stop":  # an EOS token is not part of the answer
                    s = streams[r.uid]
                    s["tokens"] += 1
                    s["first"] = s["first"] or now
                    s["last"] = now
    gen.close()
    summary = summarize_streams(list(streams.values()), start)
    summary.update(mlx_lm_prompt_tps=stats.prompt_tps, mlx_lm_generation_tps=stats.generation_tps,
                   mlx_lm_prompt_s=stats.prompt_time, mlx_lm_peak_memory_gb=stats.peak_memory)
    return summary


def phase_direct(run: Run) -> None:
    args = run.args
    spec = {"model": str(run.model_path), "max_tokens": args.max_tokens, "eos_bias": run.eos_bias,
            "temperature": args.temperature,
            "warmup": run.workload.round(1, args.prompt_tokens, "warm-direct"),
            "rounds": {str(c): {"prompts": run.prompts[c], "warmup": run.warmups[c]} for c in args.concurrency}}
    spec_path, out_path = run.work / "direct-spec.json", run.work / "direct-out.json"
    spec_path.write_text(json.dumps(spec))
    with (run.work / "direct.log").open("wb") as log:
        proc = subprocess.run([sys.executable, str(SCRIPT), "--direct-worker", str(spec_path), str(out_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=run.mlx_env, timeout=args.phase_timeout,
                              check=False)
    if proc.returncode != 0:
        tail = (run.work / "direct.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"direct worker exited with {proc.returncode}: {tail}")
    result = json.loads(out_path.read_text())
    run.report["runs"]["direct"] = result["runs"]
    run.report["memory"]["mlx-lm direct"] = result["memory"]
    run.report["machine"].update(device=result.get("device"), device_info=result.get("device_info"))
