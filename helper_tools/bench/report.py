"""The run as plain-text tables: one row per system and concurrency, the ratios, the scenarios,
memory, the targets and the phases that failed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SECTIONS", "SYSTEMS", "fmt", "render_report", "render_table"]

SYSTEMS = (("direct", "mlx-lm direct"), ("server", "mlx_lm.server"), ("router", "mlx-router"))
"""The systems compared, as (key in the report's ``runs``, label)."""


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


def fmt(value: float | None, spec: str = ".1f", scale: float = 1.0) -> str | None:
    """``value * scale`` formatted with ``spec``; None (a "-" in tables) when not measured."""
    return None if value is None else format(value * scale, spec)


def _header(report: dict[str, Any]) -> list[str]:
    m, settings = report.get("machine", {}), report["settings"]
    return [(f"machine: {m.get('platform')}, {m.get('cpu_count')} CPUs, {m.get('device')} {m.get('gpus') or ''}, "
             f"mlx {m.get('mlx_version')}, mlx-lm {m.get('mlx-lm_version')}"),
            (f"model: {report.get('model', {}).get('path')}  prompt ~{settings['prompt_tokens']} tokens, "
             f"{settings['max_tokens']} generated per request"
             f"{f', temperature {t:g}' if (t := settings.get('temperature')) else ''}, "
             f"{settings.get('repeat', 1)} round(s) per level")]


def _runs(report: dict[str, Any]) -> list[str]:
    rows = []
    for c in sorted({c for s in report["runs"].values() for c in s}, key=int):
        for key, label in SYSTEMS:
            r = report["runs"].get(key, {}).get(c)
            if r:
                rows.append([c, label, fmt(r.get("aggregate_tps")), fmt(r.get("decode_tps")),
                             fmt(r.get("ttft_p50_s"), ".0f", 1000), fmt(r.get("ttft_p99_s"), ".0f", 1000),
                             fmt(r.get("ttft_max_over_median"), ".2f"), r.get("completion_tokens"),
                             len(r.get("errors") or [])])
    return ["", render_table(["streams", "system", "agg tok/s", "decode tok/s", "TTFT p50 ms", "TTFT p99 ms",
                              "max/med TTFT", "tokens", "errors"], rows, left=2)]


def _ratios(report: dict[str, Any]) -> list[str]:
    ratio_rows = [[c] + [fmt(v, ".2f") for v in r.values()] for c, r in report.get("ratios", {}).items()]
    if not ratio_rows:
        return []
    heads = list(next(iter(report["ratios"].values())))
    return ["", render_table(["streams"] + heads, ratio_rows)]


def _prefix(report: dict[str, Any]) -> list[str]:
    prefix = report.get("prefix") or {}
    if not prefix:
        return []
    heads = ["prefix cache", "1st TTFT ms", "2nd TTFT ms", "2nd/1st", "cached tokens", "prompt tokens"]
    return ["", render_table(heads,
                             [[k, fmt(p.get("first_ttft_s"), ".0f", 1000), fmt(p.get("second_ttft_s"), ".0f", 1000),
                               fmt(p.get("second_over_first"), ".1%"), p.get("second_cached_tokens"),
                               p.get("second_prompt_tokens")] for k, p in prefix.items()])]


def _first_request(report: dict[str, Any]) -> list[str]:
    first = report.get("first_request") or {}
    if not first:
        return []
    heads = ["first request", "1st TTFT ms", "idle warm-up s", "2nd TTFT ms", "1st/2nd"]
    return ["", render_table(heads, [[k, fmt(f.get("first_ttft_s"), ".0f", 1000), fmt(f.get("idle_warmup_s"), ".1f"),
                                      fmt(f.get("second_ttft_s"), ".0f", 1000), fmt(f.get("first_over_second"), ".2f")]
                                     for k, f in first.items()])]


def _disconnect(report: dict[str, Any]) -> list[str]:
    disc = report.get("disconnect") or {}
    if not disc:
        return []
    return ["", (f"disconnect (mlx-router): {disc.get('tokens_after_close')} tokens generated after the close "
                 f"(counted by the worker), slot free {fmt(disc.get('slot_free_after_s'), '.0f', 1000)} ms after "
                 f"it (estimate from that: ~{disc.get('estimated_extra_tokens')}), worker CPU after: "
                 f"{fmt(disc.get('worker_cpu_percent_after'), '.0f')}%")]


def _agent(report: dict[str, Any]) -> list[str]:
    agent = report.get("agent") or {}
    if not agent:
        return []
    rows = [[t["turn"], t["before"], fmt(t["ttft_s"], ".0f", 1000), fmt(t["over_first"], ".1%"), t["cached_tokens"],
             t["prompt_tokens"]] for t in agent.get("turns", [])]
    events = ", ".join(f"{k} {v:.2f} s" for k, v in agent.items() if k.endswith("_s") and isinstance(v, float))
    return ["", f"agent session ({agent.get('session_tokens')}-token system prompt; {events})",
            render_table(["turn", "before it", "TTFT ms", "of turn 1", "cached tokens", "prompt tokens"], rows,
                         left={1})]


def _memory(report: dict[str, Any]) -> list[str]:
    mem = report.get("memory") or {}
    if not mem:
        return []
    return ["", render_table(["memory", "peak RSS MB", "MLX peak GB", "MLX active GB", "GPU MB", "weights GB"],
                             [[k, fmt(m.get("peak_rss_mb"), ".0f"), fmt(m.get("mlx_peak_gb"), ".2f"),
                               fmt(m.get("mlx_active_gb"), ".2f"), fmt(m.get("peak_gpu_mb"), ".0f"),
                               fmt(m.get("weight_gb"), ".2f")] for k, m in mem.items()])]


def _targets(report: dict[str, Any]) -> list[str]:
    return ["", render_table(["target", "measured", "status", "note"],
                             [[t["target"], t["measured"], t["status"], t["note"]] for t in report.get("targets", [])],
                             left={0, 3})]


def _footer(report: dict[str, Any]) -> list[str]:
    out = [f"phase {name} FAILED: {phase['error']}" for name, phase in report.get("phases", {}).items()
           if phase.get("error")]
    return [*out, f"total run time: {report.get('total_seconds', 0):.1f} s"]


SECTIONS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    _header, _runs, _ratios, _first_request, _prefix, _disconnect, _agent, _memory, _targets, _footer,
)
"""The report's parts in order, each a function of the report returning its lines (none when
it has nothing to show). A new scenario adds its section here."""


def render_report(report: dict[str, Any]) -> str:
    return "\n".join(line for section in SECTIONS for line in section(report))
