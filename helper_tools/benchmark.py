#!/usr/bin/env python3
"""Benchmark mlx-router against mlx-lm called directly and against ``mlx_lm.server``.

One run, one model, the same prompts for all three systems:

  direct      mlx-lm in a subprocess of its own: ``stream_generate`` for one stream,
              the loop of ``batch_generate`` (timed per sequence) for every concurrency above 1
  server      ``python -m mlx_lm.server``, driven by N concurrent streaming clients
  router      mlx-router (``python main.py``), driven by the same clients
  prefix      a repeated ~2k-token system prompt: TTFT of the first and second request
              (mlx-router; mlx_lm.server too when its phase runs)
  disconnect  mlx-router: a client closes its stream; time until the slot is free and an
              estimate of the tokens generated after the close

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
import asyncio
import contextlib
import io
import json
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PHASES = ("direct", "server", "router", "prefix", "disconnect")
SYSTEMS = (("direct", "mlx-lm direct"), ("server", "mlx_lm.server"), ("router", "mlx-router"))
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True, "dtype": "float32",
             "bits": None},
    "llama-1b": {"hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True, "dtype": "bfloat16",
                 "bits": None},
    "llama-8b-4bit": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
                      "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                      "tie_word_embeddings": False, "dtype": "bfloat16", "bits": 4},
}
WORDS = (  # noqa: SIM905 (200 words read better as text)
    "the a of and to in is was for on with as by at from that this it be are have has had not but or an they "
    "time year people way day man thing woman life child world school state family student group country problem "
    "hand part place case week company system program question work government number night point home water "
    "room mother area money story fact month lot right study book eye job word business issue side kind head "
    "house service friend father power hour game line end member law car city community name president team "
    "minute idea kid body information back parent face others level office door health person art war history "
    "party result change morning reason research girl guy moment air teacher force education river garden bread "
    "makes takes gives finds tells asks seems feels leaves calls keeps brings begins shows hears plays runs moves "
    "lives believes holds writes stands turns starts means opens walks reads grows loses falls reaches remains "
    "good new first last long great little own other old right big high different small large next early young "
    "important few public bad same able quiet bright slow warm green simple clear"
).split()


# ---------------------------------------------------------------------------------------------- numbers


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, linear between closest ranks (numpy's default); None without values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize_streams(streams: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """Rates and TTFT percentiles of one round of concurrent streams.

    Each stream: ``start``, ``first`` and ``last`` (times of the request and of its first and
    last token), ``tokens`` and ``error``. Aggregate tok/s = all tokens / (first request start to
    last token); decode tok/s = the sum over streams of (tokens - 1) / (last - first).
    """
    ok = [s for s in streams if not s.get("error") and s.get("first") is not None]
    ttfts = [s["first"] - s["start"] for s in ok]
    tokens = sum(s["tokens"] for s in ok)
    end = max((s["last"] for s in ok), default=None)
    wall = end - started if end is not None else None
    decode = sum((s["tokens"] - 1) / (s["last"] - s["first"]) for s in ok if s["tokens"] > 1 and s["last"] > s["first"])
    median = percentile(ttfts, 50)
    worst = max(ttfts, default=None)
    return {
        "requests": len(streams),
        "ok": len(ok),
        "errors": [s["error"] for s in streams if s.get("error")][:3],
        "completion_tokens": tokens,
        "wall_s": wall,
        "aggregate_tps": tokens / wall if wall else None,
        "decode_tps": decode or None,
        "ttft_p50_s": median,
        "ttft_p99_s": percentile(ttfts, 99),
        "ttft_max_s": worst,
        "ttft_max_over_median": ratio(worst, median),
        "ttfts_s": ttfts,
    }


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median aggregate tok/s (the lower one of an even count), with a short
    record of every round under ``rounds``."""
    ranked = sorted(rounds, key=lambda r: r.get("aggregate_tps") or 0.0)
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    keys = ("aggregate_tps", "decode_tps", "ttft_p50_s", "ttft_p99_s", "ttft_max_over_median")
    chosen["rounds"] = [{k: r.get(k) for k in keys} for r in rounds]
    return chosen


def compute_ratios(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Per concurrency: mlx-router over mlx-lm direct and over mlx_lm.server (aggregate, decode)."""
    out: dict[str, dict[str, float | None]] = {}
    levels = sorted({c for system in runs.values() for c in system}, key=int)
    for c in levels:
        d, s, r = (runs.get(k, {}).get(c) or {} for k in ("direct", "server", "router"))
        out[c] = {
            "router/direct aggregate": ratio(r.get("aggregate_tps"), d.get("aggregate_tps")),
            "router/direct decode": ratio(r.get("decode_tps"), d.get("decode_tps")),
            "router/server aggregate": ratio(r.get("aggregate_tps"), s.get("aggregate_tps")),
            "router/server decode": ratio(r.get("decode_tps"), s.get("decode_tps")),
            "server/direct aggregate": ratio(s.get("aggregate_tps"), d.get("aggregate_tps")),
        }
    return out


def _target(name: str, value: float | None, shown: str, ok: bool | None, note: str = "") -> dict[str, Any]:
    status = "n/a" if value is None or ok is None else ("PASS" if ok else "MISS")
    shown = shown if value is not None else "-"
    return {"target": name, "value": value, "measured": shown, "status": status, "note": note}


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as measured values with PASS / MISS (n/a when not measured)."""
    runs = report.get("runs", {})
    direct, server, router = (runs.get(k, {}) for k in ("direct", "server", "router"))
    d1, r1 = direct.get("1") or {}, router.get("1") or {}
    top = max((int(c) for c in router), default=None)
    t = str(top) if top is not None else "32"
    dt, st, rt = direct.get(t) or {}, server.get(t) or {}, router.get(t) or {}
    note = "" if t == "32" else f"largest concurrency run: {t}"
    decode = ratio(r1.get("decode_tps"), d1.get("decode_tps"))
    over = r1["ttft_p50_s"] - d1["prefill_s"] if r1.get("ttft_p50_s") is not None and d1.get("prefill_s") else None
    vs_batch = ratio(rt.get("aggregate_tps"), dt.get("aggregate_tps"))
    vs_server = ratio(rt.get("aggregate_tps"), st.get("aggregate_tps"))
    spread = rt.get("ttft_max_over_median")
    prefix = (report.get("prefix") or {}).get("mlx-router") or {}
    pr = prefix.get("second_over_first")
    extra = (report.get("disconnect") or {}).get("estimated_extra_tokens")

    def fmt(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "-"

    return [
        _target("1 stream decode >= 95% of stream_generate", decode, fmt(decode, ".1%"), decode and decode >= 0.95),
        _target("1 stream TTFT <= raw prefill + 10 ms", over, f"{fmt(over and over * 1000, '+.1f')} ms",
                over is not None and over <= 0.010),
        _target(f"{t} streams aggregate >= 80% of batch_generate", vs_batch, fmt(vs_batch, ".1%"),
                vs_batch and vs_batch >= 0.80, note),
        _target(f"{t} streams aggregate >= 3x mlx_lm.server", vs_server, f"{fmt(vs_server, '.2f')}x",
                vs_server and vs_server >= 3.0, note),
        _target(f"{t} streams: no TTFT > 3x median", spread, f"max/median {fmt(spread, '.2f')}",
                spread is not None and spread <= 3.0, note),
        _target("repeated prefix: 2nd TTFT <= 20% of 1st", pr, fmt(pr, ".1%"), pr is not None and pr <= 0.20),
        _target("disconnect: <= 2 more tokens", extra, f"~{extra} (estimate)", extra is not None and extra <= 2,
                "estimated from the time until the slot is free; not counted"),
    ]


# ---------------------------------------------------------------------------------------------- table


def render_table(headers: list[str], rows: list[list[Any]], left: int | set[int] = 1) -> str:
    """A plain-text table; columns in ``left`` (or the first ``left``) are left-aligned, others right."""
    left = set(range(left)) if isinstance(left, int) else left
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _n(value: float | None, spec: str = ".1f", scale: float = 1.0) -> str | None:
    return None if value is None else format(value * scale, spec)


def render_report(report: dict[str, Any]) -> str:
    m, settings = report.get("machine", {}), report["settings"]
    out = [(f"machine: {m.get('platform')}, {m.get('cpu_count')} CPUs, {m.get('device')} {m.get('gpus') or ''}, "
            f"mlx {m.get('mlx_version')}, mlx-lm {m.get('mlx-lm_version')}"),
           (f"model: {report.get('model', {}).get('path')}  prompt ~{settings['prompt_tokens']} tokens, "
            f"{settings['max_tokens']} generated per request, {settings.get('repeat', 1)} round(s) per level")]
    rows = []
    for c in sorted({c for s in report["runs"].values() for c in s}, key=int):
        for key, label in SYSTEMS:
            r = report["runs"].get(key, {}).get(c)
            if r:
                rows.append([c, label, _n(r.get("aggregate_tps")), _n(r.get("decode_tps")),
                             _n(r.get("ttft_p50_s"), ".0f", 1000), _n(r.get("ttft_p99_s"), ".0f", 1000),
                             _n(r.get("ttft_max_over_median"), ".2f"), r.get("completion_tokens"),
                             len(r.get("errors") or [])])
    out += ["", render_table(["streams", "system", "agg tok/s", "decode tok/s", "TTFT p50 ms", "TTFT p99 ms",
                              "max/med TTFT", "tokens", "errors"], rows, left=2)]
    ratio_rows = [[c] + [_n(v, ".2f") for v in r.values()] for c, r in report.get("ratios", {}).items()]
    if ratio_rows:
        heads = list(next(iter(report["ratios"].values())))
        out += ["", render_table(["streams"] + heads, ratio_rows)]
    prefix = report.get("prefix") or {}
    if prefix:
        heads = ["prefix cache", "1st TTFT ms", "2nd TTFT ms", "2nd/1st", "cached tokens", "prompt tokens"]
        out += ["", render_table(heads,
                                 [[k, _n(p.get("first_ttft_s"), ".0f", 1000), _n(p.get("second_ttft_s"), ".0f", 1000),
                                   _n(p.get("second_over_first"), ".1%"), p.get("second_cached_tokens"),
                                   p.get("second_prompt_tokens")] for k, p in prefix.items()])]
    disc = report.get("disconnect") or {}
    if disc:
        out += ["", (f"disconnect (mlx-router): slot free {_n(disc.get('slot_free_after_s'), '.0f', 1000)} ms after "
                     f"the close, ~{disc.get('estimated_extra_tokens')} tokens after it (estimate), worker CPU after: "
                     f"{_n(disc.get('worker_cpu_percent_after'), '.0f')}%")]
    mem = report.get("memory") or {}
    if mem:
        out += ["", render_table(["memory", "peak RSS MB", "MLX peak GB", "MLX active GB", "GPU MB", "weights GB"],
                                 [[k, _n(m.get("peak_rss_mb"), ".0f"), _n(m.get("mlx_peak_gb"), ".2f"),
                                   _n(m.get("mlx_active_gb"), ".2f"), _n(m.get("peak_gpu_mb"), ".0f"),
                                   _n(m.get("weight_gb"), ".2f")] for k, m in mem.items()])]
    out += ["", render_table(["target", "measured", "status", "note"],
                             [[t["target"], t["measured"], t["status"], t["note"]] for t in report.get("targets", [])],
                             left={0, 3})]
    for name, phase in report.get("phases", {}).items():
        if phase.get("error"):
            out.append(f"phase {name} FAILED: {phase['error']}")
    out.append(f"total run time: {report.get('total_seconds', 0):.1f} s")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- arguments


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="an mlx-lm model folder")
    src.add_argument("--make", choices=sorted(SHAPES), help="write (once) and use a random-weight model of this shape")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-router-bench"
    p.add_argument("--cache-dir", type=Path, default=cache, help="where --make keeps its models (default: %(default)s)")
    p.add_argument("--concurrency", type=parse_concurrency, default=[1, 8, 32],
                   help="concurrent streams per round, comma-separated (default: 1,8,32)")
    p.add_argument("--prompt-tokens", type=positive, help="prompt length in tokens (default: 64 for tiny, else 512)")
    p.add_argument("--max-tokens", type=positive, default=128, help="tokens generated per request (default: 128)")
    p.add_argument("--repeat", type=positive, default=1, help="rounds per concurrency, fresh prompts each; the "
                   "round with the median aggregate tok/s is reported, all are in the JSON (default: 1)")
    p.add_argument("--prefix-tokens", type=positive, default=2048,
                   help="shared system prompt of the prefix test (default: 2048)")
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
    args.phases = [p for p in PHASES if p in (args.only or set(PHASES)) and p not in args.skip]
    return args


# ---------------------------------------------------------------------------------------------- prompts


def _sentence(rng: random.Random) -> list[str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    words[0] = words[0].capitalize()
    words[-1] += "."
    return words


def build_text(encode: Callable[[str], list[int]], n_tokens: int, seed: str) -> str:
    """Deterministic text of at most ``n_tokens`` tokens (as close as words allow) starting with
    ``[seed]``, so prompts with different seeds share no prefix."""
    rng = random.Random(seed)
    words = [f"[{seed}]"]
    while len(encode(" ".join(words))) < n_tokens:
        missing = n_tokens - len(encode(" ".join(words)))
        while missing > 0:
            sentence = _sentence(rng)
            words += sentence
            missing -= len(sentence)
    lo, hi = 1, len(words)
    while lo < hi:  # the most words that fit
        mid = (lo + hi + 1) // 2
        if len(encode(" ".join(words[:mid]))) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


class Workload:
    """The tokenizer side of the run: prompts as chat messages, counted with the chat template."""

    def __init__(self, model_path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.encode: Callable[[str], list[int]] = lambda s: self.tokenizer.encode(s, add_special_tokens=False)
        self.overhead = len(self.templated([{"role": "user", "content": ""}]))

    def templated(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def user(self, n_tokens: int, seed: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": build_text(self.encode, max(1, n_tokens - self.overhead), seed)}]

    def round(self, concurrency: int, n_tokens: int, tag: str = "c") -> list[list[dict[str, str]]]:
        return [self.user(n_tokens, f"{tag}{concurrency}-{i}") for i in range(concurrency)]

    def rounds(self, concurrency: int, n_tokens: int, repeat: int) -> list[list[list[dict[str, str]]]]:
        """``repeat`` rounds of distinct prompts (the first round's seeds do not depend on ``repeat``)."""
        return [self.round(concurrency, n_tokens, "c" if r == 0 else f"r{r}c") for r in range(repeat)]

    def prefix_pair(self, n_tokens: int) -> list[list[dict[str, str]]]:
        system = {"role": "system", "content": build_text(self.encode, n_tokens, "shared-prefix")}
        return [[system, {"role": "user", "content": q}] for q in
                ("What is the first word above?", "How many sentences are there above?")]


def eos_ids(model_path: Path, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        with contextlib.suppress(OSError, ValueError):
            value = json.loads((model_path / name).read_text()).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


# ---------------------------------------------------------------------------------------------- models


def make_model(kind: str, cache_dir: Path, timeout: float) -> Path:
    """The folder of a random-weight model of shape ``kind``, written once by a subprocess."""
    target = cache_dir / kind / ("tiny-llama" if kind == "tiny" else f"random-{kind}")
    if not (target / ".complete").exists():
        subprocess.run([sys.executable, __file__, "--make-worker", kind, str(target)], check=True, timeout=timeout)
    return target


def make_worker(kind: str, target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    if kind == "tiny":
        sys.path.insert(0, str(REPO_ROOT))
        from mlx_router.fabricate import make_tiny_llm

        make_tiny_llm(target, max_position_embeddings=8192)
    else:
        write_random_llama(target, SHAPES[kind])
    (target / ".complete").write_text("ok\n")
    return 0


def write_tokenizer(path: Path, vocab_size: int = 1024) -> dict[str, int]:
    """A byte-level BPE trained on the spot with ChatML; returns the special token ids (0, 1, 2)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    rng = random.Random(0)
    tok.train_from_iterator([" ".join(_sentence(rng)) for _ in range(3000)], trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0], "eos_token": SPECIALS[2],
              "pad_token": SPECIALS[0], "add_bos_token": False, "chat_template": CHATML, "model_max_length": 8192}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return ids


def write_random_llama(path: Path, shape: dict[str, Any]) -> None:
    """Random weights with a Llama layout (about N(0, 0.02) once dequantized); the special tokens'
    output rows are zero. Quantized shapes are drawn directly as packed 4-bit values, so memory
    stays near the quantized size."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.models import llama
    from mlx_lm.utils import quantize_model, save_config, save_model

    ids = write_tokenizer(path)
    config = {k: v for k, v in shape.items() if k not in ("dtype", "bits")}
    config.update(model_type="llama", architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5, rope_theta=500000.0,
                  head_dim=shape["hidden_size"] // shape["num_attention_heads"], max_position_embeddings=8192,
                  torch_dtype=shape["dtype"], bos_token_id=ids[SPECIALS[0]], eos_token_id=ids[SPECIALS[2]])
    model = llama.Model(llama.ModelArgs.from_dict(config))  # lazy: nothing is computed before update()
    if shape["bits"]:
        with contextlib.redirect_stdout(io.StringIO()):
            model, config = quantize_model(model, config, group_size=64, bits=shape["bits"])
    dtype = getattr(mx, shape["dtype"])
    out = "model.embed_tokens." if shape["tie_word_embeddings"] else "lm_head."
    rows = mx.array(sorted(ids.values()))
    params = []
    for i, (name, value) in enumerate(tree_flatten(model.parameters())):
        key = mx.random.key(i)
        if value.dtype == mx.uint32:  # packed 4-bit values: uniform 0..15
            hi, lo = (mx.random.randint(0, 1 << 16, value.shape, dtype=mx.uint32, key=k) for k in mx.random.split(key))
            w = (hi << 16) | lo
        elif name.endswith((".scales", ".biases")):  # q * 0.0045 - 0.034: std ~0.02
            w = mx.full(value.shape, 0.0045 if name.endswith(".scales") else -7.5 * 0.0045, dtype=dtype)
        elif "norm" in name:
            w = mx.ones(value.shape, dtype=dtype)
        else:
            w = mx.random.normal(value.shape, dtype=dtype, key=key) * 0.02
        if name.startswith(out) and w.dtype != mx.uint32:
            w[rows] = 0  # logit exactly 0 for EOS and the other specials: greedy never picks them
        mx.eval(w)
        params.append((name, w))
    model.update(tree_unflatten(params))
    save_model(path, model)
    save_config(config, path / "config.json")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids[SPECIALS[2]]}))


# ---------------------------------------------------------------------------------------------- direct mlx-lm


def direct_worker(spec_path: Path, out_path: Path) -> int:
    """Runs in its own process so that its MLX memory is gone before the servers start."""
    import resource

    import mlx.core as mx
    from mlx_lm import batch_generate, load, stream_generate
    from mlx_lm.sample_utils import make_logits_processors

    spec = json.loads(spec_path.read_text())
    model, tokenizer = load(spec["model"])
    bias = {int(t): -100.0 for t in spec["eos_bias"]}
    procs = make_logits_processors(logit_bias=bias) if bias else None
    extra = {"logits_processors": procs} if procs else {}

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
                measured.append(_direct_single(model, tokenizer, prompts[0], n, stream_generate, extra))
            else:
                measured.append(_direct_batch(model, tokenizer, prompts, n, extra))
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
    streams = {uid: {"start": start, "first": None, "last": None, "tokens": 0, "error": None} for uid in uids}
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


def phase_direct(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    spec = {"model": str(ctx["model_path"]), "max_tokens": args.max_tokens, "eos_bias": ctx["eos_bias"],
            "warmup": ctx["workload"].round(1, args.prompt_tokens, "warm-direct"),
            "rounds": {str(c): {"prompts": ctx["prompts"][c], "warmup": ctx["warmups"][c]} for c in args.concurrency}}
    spec_path, out_path = ctx["work"] / "direct-spec.json", ctx["work"] / "direct-out.json"
    spec_path.write_text(json.dumps(spec))
    with (ctx["work"] / "direct.log").open("wb") as log:
        proc = subprocess.run([sys.executable, __file__, "--direct-worker", str(spec_path), str(out_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=ctx["mlx_env"], timeout=args.phase_timeout,
                              check=False)
    if proc.returncode != 0:
        tail = (ctx["work"] / "direct.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"direct worker exited with {proc.returncode}: {tail}")
    result = json.loads(out_path.read_text())
    ctx["report"]["runs"]["direct"] = result["runs"]
    ctx["report"]["memory"]["mlx-lm direct"] = result["memory"]
    ctx["report"]["machine"].update(device=result.get("device"), device_info=result.get("device_info"))


# ---------------------------------------------------------------------------------------------- servers


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
                self._sample_gpu({p.pid for p in procs})

    def _sample_gpu(self, pids: set[int]) -> None:
        with contextlib.suppress(Exception):
            out = subprocess.run([self.smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
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


def mlx_lm_server(args: argparse.Namespace, ctx: dict[str, Any]) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(ctx["model_path"]), "--host", "127.0.0.1",
           "--port", str(port), "--max-tokens", str(args.max_tokens), "--log-level", "WARNING",
           "--decode-concurrency", str(max(32, *args.concurrency)), "--prompt-concurrency", "8"]
    return Server("mlx_lm.server", cmd, port, ctx["mlx_env"], ctx["work"] / "mlx_lm_server.log", ctx["work"])


def router_server(args: argparse.Namespace, ctx: dict[str, Any]) -> Server:
    port, model_path = free_port(), ctx["model_path"]
    config = {
        "defaults": {"model": model_path.name, "model_directory": str(model_path.parent), "embedded_model": False,
                     "max_batch_size": max(32, *args.concurrency), "max_queue": 256, "warmup_tokens": 4,
                     "timeout": args.request_timeout, "max_tokens": args.max_tokens, "cache_size": 1},
        "server": {"port": port, "log_file": str(ctx["work"] / "router.log")},
    }
    config_path = ctx["work"] / "router-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_ROUTER_") and k != "MLX_MODEL_DIR"}
    cmd = [sys.executable, str(REPO_ROOT / "main.py"), "--config", str(config_path)]
    return Server("mlx-router", cmd, port, env, ctx["work"] / "router.stdout.log", ctx["work"])


# ---------------------------------------------------------------------------------------------- client


def chat_payload(model: str, messages: list[dict[str, str]], max_tokens: int, eos_bias: list[int]) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                               "stream": True, "stream_options": {"include_usage": True}}
    if eos_bias:
        payload["logit_bias"] = {str(t): -100 for t in eos_bias}
    return payload


async def stream_chat(client: Any, payload: dict[str, Any], stop_after: int | None = None,
                      timeout: float | None = None) -> dict[str, Any]:
    """One streaming chat request: times of the request, first and last content, usage; the whole
    request may take ``timeout`` seconds (keep-alive comments do not extend it)."""
    s: dict[str, Any] = {"start": time.perf_counter(), "first": None, "last": None, "chunks": 0, "tokens": 0,
                         "error": None, "prompt_tokens": None, "cached_tokens": None}
    try:
        async with asyncio.timeout(timeout), client.stream("POST", "/v1/chat/completions", json=payload) as resp:
            if resp.status_code != 200:
                s["error"] = f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}"
                return s
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    s["error"] = str(obj["error"])[:300]
                    break
                _take_usage(s, obj.get("usage"))
                if any((c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("reasoning_content")
                       or (c.get("delta") or {}).get("reasoning") for c in obj.get("choices") or []):
                    s["last"] = time.perf_counter()
                    s["first"] = s["first"] or s["last"]
                    s["chunks"] += 1
                    if stop_after is not None and s["chunks"] >= stop_after:
                        s["closed_at"] = time.perf_counter()
                        break
    except Exception as exc:  # noqa: BLE001 (any failure is this request's error, not the run's)
        s["error"] = f"{exc.__class__.__name__}: {exc}"[:300]
    s["tokens"] = s["tokens"] or s["chunks"]
    return s


def _take_usage(s: dict[str, Any], usage: dict[str, Any] | None) -> None:
    if usage:
        s["tokens"] = usage.get("completion_tokens") or 0
        s["prompt_tokens"] = usage.get("prompt_tokens")
        s["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")


def _client(base_url: str, timeout: float, connections: int) -> Any:
    import httpx

    limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections + 4)
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout, connect=30), limits=limits)


async def run_round(base_url: str, payloads: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    async with _client(base_url, timeout, len(payloads)) as client:
        started = time.perf_counter()
        streams = await asyncio.gather(*(stream_chat(client, p, timeout=timeout) for p in payloads))
    summary = summarize_streams(list(streams), started)
    summary["prompt_tokens"] = [s["prompt_tokens"] for s in streams][:1]
    return summary


async def run_prefix(base_url: str, payloads: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    async with _client(base_url, timeout, 1) as client:
        first = await stream_chat(client, payloads[0], timeout=timeout)
        second = await stream_chat(client, payloads[1], timeout=timeout)
    for s in (first, second):
        if s["error"] or s["first"] is None:
            raise RuntimeError(f"prefix request failed: {s['error']}")
    t1, t2 = first["first"] - first["start"], second["first"] - second["start"]
    return {"first_ttft_s": t1, "second_ttft_s": t2, "second_over_first": t2 / t1,
            "first_prompt_tokens": first["prompt_tokens"], "second_prompt_tokens": second["prompt_tokens"],
            "first_cached_tokens": first["cached_tokens"], "second_cached_tokens": second["cached_tokens"]}


async def run_disconnect(server: Server, payload: dict[str, Any], read: int, timeout: float) -> dict[str, Any]:
    """Read ``read`` chunks, close, then poll /v1/health until no sequence is left."""
    import psutil

    async with _client(server.base_url, timeout, 2) as client:
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
    step = (s["last"] - s["first"]) / max(1, s["chunks"] - 1)
    free_after = free_at - s["closed_at"] if free_at is not None else None
    cpu = None
    with contextlib.suppress(Exception):  # a worker still generating would show ~100% or more
        cpu = psutil.Process(pid).cpu_percent(interval=1.0)
    return {"chunks_read": s["chunks"], "step_s": step, "slot_free_after_s": free_after,
            "estimated_extra_tokens": math.ceil(free_after / step) + 1 if free_after is not None and step > 0 else None,
            "worker_cpu_percent_after": cpu,
            "method": "time from close until /v1/health shows no sequence, divided by the decode step time, "
                      "plus the step running when the cancel arrives; tokens are not counted"}


def drive_server(args: argparse.Namespace, ctx: dict[str, Any], server: Server, key: str, model: str) -> None:
    """Warm-up, one round per concurrency, then the prefix test: all against ``server``."""
    report, bias = ctx["report"], ctx["eos_bias"]
    startup = server.start(args.start_timeout)
    report["phases"][key]["startup_s"] = startup
    warm = [chat_payload(model, m, 8, bias) for m in ctx["workload"].round(1, args.prompt_tokens, f"warm-{key}")]
    asyncio.run(run_round(server.base_url, warm, args.request_timeout))
    report["runs"][key] = {}
    for c in args.concurrency:
        warmups = [chat_payload(model, m, 4, bias) for m in ctx["warmups"][c]]
        asyncio.run(run_round(server.base_url, warmups, args.request_timeout))
        rounds = []
        for messages in ctx["prompts"][c]:
            payloads = [chat_payload(model, m, args.max_tokens, bias) for m in messages]
            rounds.append(asyncio.run(run_round(server.base_url, payloads, args.request_timeout)))
        report["runs"][key][str(c)] = median_round(rounds)
        print(f"  {server.name} {c} stream(s): {_n(report['runs'][key][str(c)]['aggregate_tps'])} tok/s", flush=True)


def _record_memory(ctx: dict[str, Any], label: str, server: Server, extra: dict[str, Any] | None = None) -> None:
    sampler = server.sampler
    if sampler is not None:
        ctx["report"]["memory"][label] = {"peak_rss_mb": sampler.peak_rss / 2**20, "peak_gpu_mb": sampler.peak_gpu_mb,
                                          **(extra or {})}


def phase_server(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    server = mlx_lm_server(args, ctx)
    try:
        drive_server(args, ctx, server, "server", "default_model")
        if "prefix" in args.phases:
            payloads = [chat_payload("default_model", m, 8, ctx["eos_bias"]) for m in ctx["prefix"]]
            prefix = asyncio.run(run_prefix(server.base_url, payloads, args.request_timeout))
            ctx["report"]["prefix"]["mlx_lm.server"] = prefix
    finally:
        server.stop()
        _record_memory(ctx, "mlx_lm.server", server)


def phase_router(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    import httpx

    server, model, report = router_server(args, ctx), ctx["model_path"].name, ctx["report"]
    health: dict[str, Any] = {}
    try:
        if "router" in args.phases:
            drive_server(args, ctx, server, "router", model)
        else:
            report["phases"]["router"]["startup_s"] = server.start(args.start_timeout)
        if "prefix" in args.phases:
            payloads = [chat_payload(model, m, 8, ctx["eos_bias"]) for m in ctx["prefix"]]
            report["prefix"]["mlx-router"] = asyncio.run(run_prefix(server.base_url, payloads, args.request_timeout))
        if "disconnect" in args.phases:
            payload = chat_payload(model, ctx["workload"].user(args.prompt_tokens, "disconnect"),
                                   max(256, 4 * args.max_tokens), ctx["eos_bias"])
            report["disconnect"] = asyncio.run(run_disconnect(server, payload, 8, args.request_timeout))
        health = httpx.get(f"{server.base_url}/v1/health", timeout=10).json()
        report["router_health"] = health
    finally:
        server.stop()
        weight = next((m.get("weight_gb") for m in health.get("loaded_models") or []), None)
        _record_memory(ctx, "mlx-router", server, {"weight_gb": weight})


# ---------------------------------------------------------------------------------------------- orchestration


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


def blas_preload(choice: str) -> str | None:
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from mlx_router.engine.client import openblas_library
    except ImportError:
        return None
    return openblas_library()


def prepare(args: argparse.Namespace, report: dict[str, Any], work: Path) -> dict[str, Any]:
    model_path = (args.model or make_model(args.make, args.cache_dir, args.phase_timeout)).expanduser().resolve()
    workload = Workload(model_path)
    ignore = args.ignore_eos == "on" or (args.ignore_eos == "auto" and args.make is None)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    preload = blas_preload(args.blas_preload)
    if preload:
        env["LD_PRELOAD"] = preload
    ctx = {"model_path": model_path, "workload": workload, "work": work, "report": report, "mlx_env": env,
           "eos_bias": eos_ids(model_path, workload.tokenizer) if ignore else [],
           "prompts": {c: workload.rounds(c, args.prompt_tokens, args.repeat) for c in args.concurrency},
           # Warm-ups use the measured prompt length (other words, so no cache can help): MLX's CUDA
           # backend compiles kernels per new shape on first use, and every system should have paid
           # that before it is measured.
           "warmups": {c: workload.round(c, args.prompt_tokens, "warm") for c in args.concurrency},
           "prefix": workload.prefix_pair(args.prefix_tokens)}
    report["model"] = {"path": str(model_path), "made": args.make, "eos_bias": ctx["eos_bias"], "ld_preload": preload,
                       "prompt_tokens": len(workload.templated(ctx["prompts"][args.concurrency[0]][0][0])),
                       "prefix_prompt_tokens": len(workload.templated(ctx["prefix"][0]))}
    return ctx


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
                                           "max_tokens": args.max_tokens, "prefix_tokens": args.prefix_tokens,
                                           "phases": args.phases, "work_dir": str(work)}}
    print(f"work dir (logs, configs): {work}", flush=True)
    ctx: dict[str, Any] = {}
    run_phase(report, "prepare", lambda: ctx.update(prepare(args, report, work)))
    if report["phases"]["prepare"].get("ok"):
        if "direct" in args.phases:
            run_phase(report, "direct", lambda: phase_direct(args, ctx))
        if "server" in args.phases:
            run_phase(report, "server", lambda: phase_server(args, ctx))
        if {"router", "prefix", "disconnect"} & set(args.phases):
            run_phase(report, "router", lambda: phase_router(args, ctx))
    report["ratios"] = compute_ratios(report["runs"])
    report["targets"] = evaluate_targets(report)
    report["total_seconds"] = time.perf_counter() - started
    print(render_report(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0 if all(p.get("ok") for p in report["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
