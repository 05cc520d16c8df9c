"""The numbers of a run: per-round rates and TTFT percentiles, the median round, ratios between
systems, and the targets as PASS / MISS. Pure functions of plain values."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["compute_ratios", "evaluate_targets", "median_round", "percentile", "ratio", "summarize_streams"]


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
    t = "32" if "32" in router or top is None else str(top)
    dt, st, rt = direct.get(t) or {}, server.get(t) or {}, router.get(t) or {}
    note = "" if t == "32" else f"largest concurrency run: {t}"
    decode = ratio(r1.get("decode_tps"), d1.get("decode_tps"))
    over = r1["ttft_p50_s"] - d1["prefill_s"] if r1.get("ttft_p50_s") is not None and d1.get("prefill_s") else None
    vs_batch = ratio(rt.get("aggregate_tps"), dt.get("aggregate_tps"))
    vs_server = ratio(rt.get("aggregate_tps"), st.get("aggregate_tps"))
    ttft_vs_batch = ratio(rt.get("ttft_p50_s"), dt.get("ttft_p50_s"))
    first = (report.get("first_request") or {}).get("mlx-router") or {}
    first_ratio = first.get("first_over_second")
    spread = rt.get("ttft_max_over_median")
    prefix = (report.get("prefix") or {}).get("mlx-router") or {}
    pr = prefix.get("second_over_first")
    disc = report.get("disconnect") or {}
    extra = disc.get("tokens_after_close")
    agent = (report.get("agent") or {}).get("turns") or []
    stays = max((t["over_first"] for t in agent if t["before"] == "stays"), default=None)
    swapped = max((t["over_first"] for t in agent if t["before"] in ("after swap", "after restart")), default=None)

    def fmt(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "-"

    return [
        _target("1 stream decode >= 97% of stream_generate", decode, fmt(decode, ".1%"), decode is not None and decode >= 0.97),
        _target("1 stream TTFT <= raw prefill + 10 ms", over, f"{fmt(over and over * 1000, '+.1f')} ms",
                over is not None and over <= 0.010),
        _target(f"{t} streams aggregate >= 85% of batch_generate", vs_batch, fmt(vs_batch, ".1%"),
                vs_batch is not None and vs_batch >= 0.85, note),
        _target(f"{t} streams TTFT p50 <= 1.5x batch_generate's", ttft_vs_batch, f"{fmt(ttft_vs_batch, '.2f')}x",
                ttft_vs_batch is not None and ttft_vs_batch <= 1.5, note),
        _target(f"{t} streams aggregate >= 3x mlx_lm.server", vs_server, f"{fmt(vs_server, '.2f')}x",
                vs_server is not None and vs_server >= 3.0, note),
        _target(f"{t} streams: no TTFT > 2x median", spread, f"max/median {fmt(spread, '.2f')}",
                spread is not None and spread <= 2.0, note),
        _target("repeated prefix: 2nd TTFT <= 10% of 1st", pr, fmt(pr, ".1%"), pr is not None and pr <= 0.10),
        _target("first request after a load <= 2x the second", first_ratio, f"{fmt(first_ratio, '.2f')}x",
                first_ratio is not None and first_ratio <= 2.0, "the second after the idle warm-up"),
        _target("disconnect: <= 2 more tokens", extra, f"{extra}", extra is not None and extra <= 2,
                "counted by the worker"),
        _target("agent session: turn N TTFT <= 10% of turn 1 (model stays)", stays, fmt(stays, ".1%"),
                stays is not None and stays <= 0.10, "worst turn"),
        _target("agent session: <= 25% after a swap and after a restart", swapped, fmt(swapped, ".1%"),
                swapped is not None and swapped <= 0.25, "worst of the two"),
    ]
