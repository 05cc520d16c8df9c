"""The client side: OpenAI chat requests streamed over HTTP, timed at the first and last token.

Every system is driven the same way, mlx_lm.server and mlx-router alike, so their numbers mean
the same thing: the time from sending the request to the first and last content chunk, and the
completion tokens the server reports in its usage (the count of content chunks without one).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from helper_tools.bench.context import Messages
from helper_tools.bench.stats import summarize_streams

__all__ = ["chat_payload", "http_client", "run_round", "stream_chat"]


def chat_payload(model: str, messages: Messages, max_tokens: int, eos_bias: list[int],
                 temperature: float = 0.0) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
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


def http_client(base_url: str, timeout: float, connections: int) -> Any:
    import httpx

    limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections + 4)
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout, connect=30), limits=limits)


async def run_round(base_url: str, payloads: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    async with http_client(base_url, timeout, len(payloads)) as client:
        started = time.perf_counter()
        streams = await asyncio.gather(*(stream_chat(client, p, timeout=timeout) for p in payloads))
    summary = summarize_streams(list(streams), started)
    summary["prompt_tokens"] = [s["prompt_tokens"] for s in streams][:1]
    return summary
