"""helper_tools/benchmark.py (its code in helper_tools/bench/): the pure parts (numbers, table,
arguments, prompts, SSE parsing), and one smoke run of the whole benchmark on the tiny model."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helper_tools.bench import cli, stats
from helper_tools.bench.client import chat_payload, stream_chat
from helper_tools.bench.report import render_report, render_table
from helper_tools.bench.workload import Workload, build_text
from mlx_router.fabricate import write_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "helper_tools" / "benchmark.py"


# ---------------------------------------------------------------------------------------------- numbers


def test_percentile_interpolates_like_numpy() -> None:
    assert stats.percentile([], 50) is None
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert stats.percentile([float(x) for x in range(1, 101)], 99) == pytest.approx(99.01)
    assert stats.percentile([1.0, 2.0, 3.0], 0) == 1.0
    assert stats.percentile([1.0, 2.0, 3.0], 100) == 3.0


def test_ratio_is_none_without_both_numbers() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(3.0, None) is None
    assert stats.ratio(3.0, 0.0) is None


def _stream(start: float, first: float, last: float, tokens: int, error: str | None = None) -> dict[str, Any]:
    return {"start": start, "first": first, "last": last, "tokens": tokens, "error": error}


def test_summarize_streams_rates_and_ttft() -> None:
    streams = [
        _stream(0.0, 1.0, 3.0, 11),  # 10 tokens after the first in 2 s: 5 tok/s
        _stream(0.0, 2.0, 6.0, 21),  # 20 in 4 s: 5 tok/s
        _stream(0.0, 0.5, 0.5, 0, error="HTTP 503"),  # failed: not counted
    ]
    s = stats.summarize_streams(streams, started=0.0)
    assert s["requests"] == 3 and s["ok"] == 2
    assert s["errors"] == ["HTTP 503"]
    assert s["completion_tokens"] == 32
    assert s["wall_s"] == 6.0
    assert s["aggregate_tps"] == pytest.approx(32 / 6)
    assert s["decode_tps"] == pytest.approx(10.0)
    assert s["ttft_p50_s"] == pytest.approx(1.5)
    assert s["ttft_max_s"] == 2.0
    assert s["ttft_max_over_median"] == pytest.approx(2.0 / 1.5)


def test_summarize_streams_without_successes() -> None:
    s = stats.summarize_streams([_stream(0.0, None, None, 0, error="boom")], started=0.0)  # type: ignore[arg-type]
    assert s["ok"] == 0
    assert s["aggregate_tps"] is None and s["decode_tps"] is None and s["ttft_p50_s"] is None


def test_median_round_keeps_every_round() -> None:
    rounds = [{"aggregate_tps": 30.0, "decode_tps": 1.0}, {"aggregate_tps": 10.0}, {"aggregate_tps": 20.0, "x": 1}]
    chosen = stats.median_round(rounds)
    assert chosen["aggregate_tps"] == 20.0 and chosen["x"] == 1
    assert [r["aggregate_tps"] for r in chosen["rounds"]] == [30.0, 10.0, 20.0]
    assert stats.median_round([{"aggregate_tps": 2.0}, {"aggregate_tps": 1.0}])["aggregate_tps"] == 1.0


def _report() -> dict[str, Any]:
    run = {"aggregate_tps": 100.0, "decode_tps": 120.0, "ttft_p50_s": 0.05, "ttft_p99_s": 0.06,
           "ttft_max_over_median": 1.2, "completion_tokens": 128, "errors": []}
    return {
        "settings": {"prompt_tokens": 512, "max_tokens": 128},
        "model": {"path": "/models/m"},
        "runs": {
            "direct": {"1": {**run, "prefill_s": 0.045}, "32": {**run, "aggregate_tps": 1000.0}},
            "server": {"1": run, "32": {**run, "aggregate_tps": 300.0}},
            "router": {"1": {**run, "decode_tps": 118.0},
                       "32": {**run, "aggregate_tps": 900.0, "ttft_max_over_median": 4.0, "ttft_p50_s": 0.08}},
        },
        "prefix": {"mlx-router": {"first_ttft_s": 1.0, "second_ttft_s": 0.1, "second_over_first": 0.1,
                                  "second_cached_tokens": 2048, "second_prompt_tokens": 2070}},
        "first_request": {"mlx-router": {"first_ttft_s": 0.09, "second_ttft_s": 0.05, "first_over_second": 1.8,
                                         "idle_warmup_s": 2.5}},
        "disconnect": {"slot_free_after_s": 0.004, "estimated_extra_tokens": 2, "tokens_after_close": 1, "worker_cpu_percent_after": 1.0},
        "memory": {"mlx-router": {"peak_rss_mb": 900.0, "weight_gb": 0.5}},
        "phases": {"direct": {"ok": True}, "server": {"ok": False, "error": "RuntimeError: it broke"}},
        "total_seconds": 12.5,
    }


def test_compute_ratios_per_concurrency() -> None:
    ratios = stats.compute_ratios(_report()["runs"])
    assert list(ratios) == ["1", "32"]
    assert ratios["32"]["router/direct aggregate"] == pytest.approx(0.9)
    assert ratios["32"]["router/server aggregate"] == pytest.approx(3.0)
    assert ratios["1"]["router/direct decode"] == pytest.approx(118 / 120)
    assert ratios["1"]["server/direct aggregate"] == pytest.approx(1.0)


def test_evaluate_targets_pass_miss_and_missing() -> None:
    targets = {t["target"]: t for t in stats.evaluate_targets(_report())}
    assert targets["1 stream decode >= 97% of stream_generate"]["status"] == "PASS"
    assert targets["1 stream TTFT <= raw prefill + 10 ms"]["status"] == "PASS"  # 50 ms vs 45 + 10
    assert targets["32 streams aggregate >= 85% of batch_generate"]["status"] == "PASS"
    assert targets["32 streams TTFT p50 <= 1.5x batch_generate's"]["status"] == "MISS"  # 80 ms vs 50
    assert targets["first request after a load <= 2x the second"]["status"] == "PASS"
    assert targets["32 streams aggregate >= 3x mlx_lm.server"]["status"] == "PASS"
    assert targets["32 streams: no TTFT > 2x median"]["status"] == "MISS"
    assert targets["repeated prefix: 2nd TTFT <= 10% of 1st"]["status"] == "PASS"
    assert targets["disconnect: <= 2 more tokens"]["status"] == "PASS"
    empty = stats.evaluate_targets({"runs": {}})
    assert {t["status"] for t in empty} == {"n/a"}


def test_targets_name_the_largest_concurrency_run() -> None:
    report = _report()
    for system in report["runs"].values():
        system["8"] = system.pop("32")
    names = [t["target"] for t in stats.evaluate_targets(report)]
    assert "8 streams aggregate >= 85% of batch_generate" in names


# ---------------------------------------------------------------------------------------------- table


def test_render_table_aligns_columns() -> None:
    text = render_table(["name", "value"], [["a", "1.0"], ["long name", None]])
    lines = text.splitlines()
    assert lines[0] == "name       value"
    assert lines[1] == "---------  -----"
    assert lines[2] == "a            1.0"
    assert lines[3] == "long name      -"


def test_render_report_shows_every_section() -> None:
    report = _report()
    report["ratios"] = stats.compute_ratios(report["runs"])
    report["targets"] = stats.evaluate_targets(report)
    text = render_report(report)
    for expected in ("mlx-lm direct", "mlx_lm.server", "mlx-router", "router/server aggregate", "prefix cache",
                     "disconnect (mlx-router)", "peak RSS MB", "PASS", "MISS", "phase server FAILED: RuntimeError",
                     "total run time: 12.5 s"):
        assert expected in text, expected
    first = next(line for line in text.splitlines() if line.startswith("mlx-router") and "1.80" in line)
    assert "90" in first and "2.5" in first and "50" in first
    row = next(line for line in text.splitlines() if line.startswith("32") and "mlx-router" in line)
    assert "900.0" in row and "4.00" in row


# ---------------------------------------------------------------------------------------------- arguments


def test_parse_args_defaults() -> None:
    args = cli.parse_args(["--make", "tiny"])
    assert args.concurrency == [1, 8, 32]
    assert args.prompt_tokens == 64 and args.max_tokens == 128 and args.prefix_tokens == 2048
    assert args.temperature == 0.0 and cli.parse_args(["--make", "tiny", "--temperature", "0.7"]).temperature == 0.7
    assert args.phases == list(cli.PHASES)
    assert cli.parse_args(["--model", "/m"]).prompt_tokens == 512
    assert cli.parse_args(["--make", "llama-1b", "--prompt-tokens", "100"]).prompt_tokens == 100


def test_parse_args_lists_and_phases() -> None:
    args = cli.parse_args(["--model", "/m", "--concurrency", "8, 1,8", "--only", "router,prefix", "--skip", "prefix"])
    assert args.concurrency == [1, 8]
    assert args.phases == ["router"]
    assert cli.parse_args(["--model", "/m", "--skip", "direct,server"]).phases == ["router", "prefix", "disconnect", "agent"]


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no model source
        ["--model", "/m", "--make", "tiny"],
        ["--make", "huge"],
        ["--model", "/m", "--concurrency", "0"],
        ["--model", "/m", "--concurrency", "a,b"],
        ["--model", "/m", "--only", "warp"],
        ["--model", "/m", "--temperature", "2.5"],
        ["--model", "/m", "--temperature", "warm"],
    ],
)
def test_parse_args_refuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_router_default_takes_json_values() -> None:
    args = cli.parse_args(["--model", "/m", "--router-default", "buffer_cache_bytes=0",
                           "--router-default", "prefill_buckets=true", "--router-default", "chat_template=chatml"])
    assert args.router_default == [("buffer_cache_bytes", 0), ("prefill_buckets", True), ("chat_template", "chatml")]
    with pytest.raises(SystemExit):
        cli.parse_args(["--model", "/m", "--router-default", "no-equals-sign"])


def test_help_lists_the_phases(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["-h"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--concurrency" in out and "disconnect" in out and "--direct-worker" not in out


# ---------------------------------------------------------------------------------------------- prompts


def _words(text: str) -> list[int]:
    """A fake tokenizer: one token per whitespace-separated word."""
    return list(range(len(text.split())))


def test_build_text_hits_the_length_and_is_deterministic() -> None:
    text = build_text(_words, 200, "c8-3")
    assert len(text.split()) == 200
    assert text.startswith("[c8-3] ")
    assert build_text(_words, 200, "c8-3") == text
    other = build_text(_words, 200, "c8-4")
    assert other.split()[1:4] != text.split()[1:4]  # different seeds differ right from the start


def test_build_text_never_exceeds_the_budget() -> None:
    def chars(text: str) -> list[int]:  # a tokenizer whose counts do not follow word boundaries
        return list(range(len(text) // 3))

    for n in (1, 7, 64, 500):
        assert len(chars(build_text(chars, n, "s"))) <= max(n, len(chars("[s]")))


def test_workload_prompts_have_the_requested_length(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    write_tokenizer(tmp_path, 1024)  # the byte-level BPE with ChatML that --make writes for large shapes
    workload = Workload(tmp_path)
    assert 290 <= len(workload.templated(workload.user(300, "c1-0"))) <= 300
    rounds = workload.rounds(4, 120, repeat=2)
    contents = [m[0]["content"] for r in rounds for m in r]
    assert len(rounds) == 2 and len(set(contents)) == 8
    assert [c.split()[0] for c in contents[:4]] == ["[c4-0]", "[c4-1]", "[c4-2]", "[c4-3]"]
    assert workload.rounds(4, 120, repeat=1)[0] == rounds[0]  # round 0 does not depend on --repeat
    first, second = workload.prefix_pair(500)
    assert first[0] == second[0] and first[1] != second[1]
    assert len(workload.templated(first)) >= 500


def test_chat_payload() -> None:
    messages = [{"role": "user", "content": "hi"}]
    payload = chat_payload("m", messages, 16, [])
    assert payload == {"model": "m", "messages": messages, "max_tokens": 16, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}
    assert chat_payload("m", messages, 16, [2, 0])["logit_bias"] == {"2": -100, "0": -100}
    assert chat_payload("m", messages, 16, [], 0.7)["temperature"] == 0.7


# ---------------------------------------------------------------------------------------------- client


def _sse(*objects: Any) -> bytes:
    return b"".join(f"data: {json.dumps(o)}\n\n".encode() for o in objects) + b": keep-alive\n\ndata: [DONE]\n\n"


def _chunk(content: str | None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def _run_stream(body: bytes, status: int = 200, stop_after: int | None = None) -> dict[str, Any]:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await stream_chat(client, {"model": "m"}, stop_after=stop_after)

    return asyncio.run(go())


def test_stream_chat_reads_content_and_usage() -> None:
    usage = {"prompt_tokens": 70, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 64}}
    s = _run_stream(_sse(_chunk(""), _chunk("Hel"), _chunk("lo"), _chunk(None), {"choices": [], "usage": usage}))
    assert s["error"] is None
    assert s["chunks"] == 2  # the empty role chunk does not count as the first token
    assert s["tokens"] == 5 and s["prompt_tokens"] == 70 and s["cached_tokens"] == 64
    assert s["start"] <= s["first"] <= s["last"]


def test_stream_chat_counts_chunks_without_usage_and_stops_early() -> None:
    body = _sse(*[_chunk(str(i)) for i in range(6)])
    assert _run_stream(body)["tokens"] == 6
    early = _run_stream(body, stop_after=2)
    assert early["chunks"] == 2 and "closed_at" in early


def test_stream_chat_reports_errors() -> None:
    assert _run_stream(b'{"error": "busy"}', status=503)["error"].startswith("HTTP 503")
    in_stream = _run_stream(_sse(_chunk("a"), {"error": {"message": "worker crashed"}}))
    assert "worker crashed" in in_stream["error"]


def test_stream_chat_times_out_as_a_whole() -> None:
    async def body() -> Any:
        yield f"data: {json.dumps(_chunk('a'))}\n\n".encode()
        while True:  # keep-alive comments must not keep a request alive forever
            await asyncio.sleep(0.02)
            yield b": keep-alive\n\n"

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body()))

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await stream_chat(client, {"model": "m"}, timeout=0.2)

    started = time.monotonic()
    s = asyncio.run(go())
    assert s["error"].startswith("TimeoutError") and s["chunks"] == 1
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------------------------------------- smoke run


@pytest.mark.integration
def test_smoke_run_on_the_tiny_model(tmp_path: Path) -> None:
    """The whole benchmark, every phase, on the tiny model: numbers for all three systems."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_ROUTER_") and k != "MLX_MODEL_DIR"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--make", "tiny", "--cache-dir", str(tmp_path / "cache"), "--concurrency", "1,2",
         "--max-tokens", "8", "--work-dir", str(tmp_path / "work"), "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for system in ("direct", "server", "router"):
        for c in ("1", "2"):
            run = report["runs"][system][c]
            assert run["completion_tokens"] == 8 * int(c), (system, c, run)  # EOS never cuts a request short
            assert run["aggregate_tps"] > 0
    assert report["runs"]["router"]["2"]["ttft_p50_s"] > 0
    prefix = report["prefix"]["mlx-router"]
    assert prefix["second_cached_tokens"] >= 2000 and prefix["second_ttft_s"] < prefix["first_ttft_s"]
    assert report["disconnect"]["slot_free_after_s"] is not None
    assert report["memory"]["mlx-router"]["peak_rss_mb"] > 0
    assert {t["status"] for t in report["targets"]} <= {"PASS", "MISS", "n/a"}
    assert "total run time" in proc.stdout
