"""Prometheus metrics of one app: its own :class:`~prometheus_client.CollectorRegistry` (never
the global one: tests build many apps in one process, and two routers may share a process).

Counters and histograms are fed where things happen: the middleware (responses, errors), the
runner (one :class:`GenerationObserver` per job, called where chunks are yielded)
and manager events (loads, evictions, worker exits). State — models and their states, memory,
in-flight requests, queues, pressure — is read from the manager by :class:`ManagerCollector`
at scrape time, so it is never stale.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from mlx_router.engine.types import Admission, GenerationChunk
from mlx_router.metrics.history import ActivityHistory, RecentErrors

if TYPE_CHECKING:
    from mlx_router.config.settings import Settings
    from mlx_router.manager.manager import ManagerEvent, MLXModelManager

__all__ = ["GenerationObserver", "ManagerCollector", "RouterMetrics"]

PRESSURE_LEVELS = ("normal", "moderate", "high", "critical")
MODEL_STATES = ("unloaded", "loading", "ready", "unloading", "failed")
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class RouterMetrics:
    """Every metric of one router, the status page's history and its recent errors."""

    def __init__(self, manager: MLXModelManager, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.history = ActivityHistory(settings.server.status_history_seconds)
        self.errors = RecentErrors(settings.server.status_errors_kept)
        r = self.registry
        self.http_requests = Counter(
            "mlx_router_http_requests", "HTTP responses by route template, model and status.",
            ["route", "model", "status"], registry=r,
        )
        self.errors_total = Counter(
            "mlx_router_errors", "Errors sent to clients, as an HTTP status or inside a 200 stream (status: the "
            "error's own status).", ["route", "model", "status", "code"], registry=r,
        )
        self.generations = Counter(
            "mlx_router_generation_requests", "Chat and text completion requests that started generating.",
            ["model"], registry=r,
        )
        self.embedding_requests = Counter(
            "mlx_router_embedding_requests", "Embedding requests that reached a model (their tokens count in "
            "mlx_router_prompt_tokens).", ["model"], registry=r,
        )
        self.ttft = Histogram(
            "mlx_router_time_to_first_token_seconds", "From the start of a request's generation (model load and "
            "queueing included) to its first token, per sequence.", ["model"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            "mlx_router_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.",
            ["model"], buckets=ITL_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "mlx_router_prompt_tokens", "Prompt tokens of admitted sequences.", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "mlx_router_cached_prompt_tokens", "Prompt tokens whose KV came from the prefix cache.", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "mlx_router_generated_tokens", "Tokens generated (cancelled sequences included).", ["model"], registry=r
        )
        self.cancelled = Counter(
            "mlx_router_cancelled_sequences", "Sequences stopped because their client went away.", ["model"], registry=r
        )
        self.tokens_after_cancel = Counter(
            "mlx_router_tokens_after_cancel", "Tokens generated after a client went away, counted by the worker "
            "(beyond the last chunk passed on to the client).", ["model"], registry=r,
        )
        self.loads = Counter(
            "mlx_router_model_loads", "Model loads by result (ok, failed).", ["model", "result"], registry=r
        )
        self.load_seconds = Histogram(
            "mlx_router_model_load_seconds", "Wall time of model loads that succeeded (making room, GGUF import and "
            "worker start included).", ["model"], buckets=LOAD_BUCKETS, registry=r,
        )
        self.evictions = Counter(
            "mlx_router_model_evictions", "Models unloaded to make room for another (reason room) or under memory "
            "pressure (reason pressure).", ["model", "reason"], registry=r,
        )
        self.worker_restarts = Counter(
            "mlx_router_worker_restarts", "Worker processes that died while serving a model (restarted on the next "
            "request, or at once for pinned models).", ["model"], registry=r,
        )
        r.register(ManagerCollector(manager))
        manager.listeners.append(self.on_manager_event)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """Every metric, and its content type: the Prometheus text format, or OpenMetrics when
        the scraper's ``Accept`` header asks for it."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # -------------------------------------------------------------- observers

    def on_manager_event(self, event: ManagerEvent) -> None:
        if event.kind == "loaded":
            self.loads.labels(event.model_id, "ok").inc()
            self.load_seconds.labels(event.model_id).observe(event.seconds)
        elif event.kind == "load_failed":
            self.loads.labels(event.model_id, "failed").inc()
        elif event.kind == "evicted":
            self.evictions.labels(event.model_id, event.reason).inc()
        elif event.kind == "worker_exit":
            self.worker_restarts.labels(event.model_id).inc()
        elif event.kind == "cancelled":
            self.cancelled.labels(event.model_id).inc()
            self.tokens_after_cancel.labels(event.model_id).inc(event.tokens)

    def generation(self, model_id: str) -> GenerationObserver:
        """Count a generation request and return the observer of its chunks."""
        self.generations.labels(model_id).inc()
        self.history.add_request()
        return GenerationObserver(self, model_id)

    def embedding(self, model_id: str) -> None:
        """Count an embedding request."""
        self.embedding_requests.labels(model_id).inc()
        self.history.add_request()

    def response(self, route: str, model: str | None, status: int, error: tuple[int, str, str] | None) -> None:
        """One HTTP response is done; ``error`` is (status, code, message) of the error it sent, if any."""
        self.http_requests.labels(route, model or "", str(status)).inc()
        if error is not None:
            error_status, code, message = error
            self.errors_total.labels(route, model or "", str(error_status), code).inc()
            self.errors.add(error_status, code, message, model, route)


class GenerationObserver:
    """Times and counts the admissions and chunks of one job, as the service yields them."""

    __slots__ = ("_cached", "_generated", "_history", "_itl", "_last", "_prompt", "_started", "_ttft")

    def __init__(self, metrics: RouterMetrics, model_id: str) -> None:
        self._started = time.perf_counter()
        self._ttft = metrics.ttft.labels(model_id)
        self._itl = metrics.itl.labels(model_id)
        self._prompt = metrics.prompt_tokens.labels(model_id)
        self._cached = metrics.cached_tokens.labels(model_id)
        self._generated = metrics.generated_tokens.labels(model_id)
        self._history = metrics.history
        self._last: dict[int, tuple[float, int]] = {}
        """Per choice: when its last token came and how many it had then."""

    def __call__(self, index: int, item: Any) -> None:
        if isinstance(item, Admission):
            self._prompt.inc(item.prompt_tokens)
            self._cached.inc(item.cached_tokens)
            return
        if not isinstance(item, GenerationChunk):
            return
        now = time.perf_counter()
        seen, count = self._last.get(index, (self._started, 0))
        new = item.completion_tokens - count
        if new <= 0:
            return
        if count == 0:
            self._ttft.observe(now - seen)
        else:
            self._itl.observe((now - seen) / new)
        self._generated.inc(new)
        self._history.add_tokens(new)
        self._last[index] = (now, item.completion_tokens)


class ManagerCollector:
    """Gauges read from the manager and the memory monitor at scrape time."""

    def __init__(self, manager: MLXModelManager) -> None:
        self.manager = manager

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        by_name = {family.name: family for family in families}
        manager = self.manager
        resident_cost = 0
        for stats in manager.model_stats():
            for state in MODEL_STATES:
                by_name["mlx_router_model_state"].add_metric([stats.id, state], 1.0 if stats.state == state else 0.0)
            by_name["mlx_router_model_in_flight"].add_metric([stats.id], stats.in_flight)
            by_name["mlx_router_model_queue_depth"].add_metric([stats.id], stats.queued)
            if stats.resident:
                resident_cost += stats.cost_bytes
                by_name["mlx_router_model_weight_bytes"].add_metric([stats.id], stats.weight_bytes)
                by_name["mlx_router_model_cost_bytes"].add_metric([stats.id], stats.cost_bytes)
            if stats.mlx_memory is not None:
                by_name["mlx_router_model_mlx_active_bytes"].add_metric([stats.id], stats.mlx_memory.active_bytes)
                by_name["mlx_router_model_mlx_peak_bytes"].add_metric([stats.id], stats.mlx_memory.peak_bytes)
                by_name["mlx_router_model_mlx_cache_bytes"].add_metric([stats.id], stats.mlx_memory.cache_bytes)
        snapshot = manager.monitor.snapshot()
        by_name["mlx_router_models_resident"].add_metric([], manager.resident_count)
        by_name["mlx_router_memory_budget_bytes"].add_metric([], manager.budget_bytes)
        by_name["mlx_router_memory_resident_bytes"].add_metric([], resident_cost)
        by_name["mlx_router_memory_total_bytes"].add_metric([], snapshot.total_bytes)
        by_name["mlx_router_memory_available_bytes"].add_metric([], snapshot.available_bytes)
        by_name["mlx_router_swap_used_percent"].add_metric([], snapshot.swap_percent)
        by_name["mlx_router_memory_pressure_level"].add_metric([], PRESSURE_LEVELS.index(snapshot.level))
        for level in PRESSURE_LEVELS:
            by_name["mlx_router_memory_pressure"].add_metric([level], 1.0 if snapshot.level == level else 0.0)
        return iter(families)

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        model = ["model"]
        return [
            GaugeMetricFamily("mlx_router_model_state", "1 for the state each model is in, 0 for the others.",
                              labels=["model", "state"]),
            GaugeMetricFamily("mlx_router_model_in_flight", "Requests holding the model now.", labels=model),
            GaugeMetricFamily("mlx_router_model_queue_depth", "Sequences waiting: for the model to load or take "
                              "its turn, or in its worker beyond max_batch_size.", labels=model),
            GaugeMetricFamily("mlx_router_model_weight_bytes", "Weights of a resident model as MLX holds them.",
                              labels=model),
            GaugeMetricFamily("mlx_router_model_cost_bytes", "What a resident model counts against the memory "
                              "budget (weights plus KV allowance).", labels=model),
            GaugeMetricFamily("mlx_router_model_mlx_active_bytes", "MLX's active memory in the model's worker as "
                              "last reported (weights, KV caches, prefix cache; at most 1 s old while it generates).",
                              labels=model),
            GaugeMetricFamily("mlx_router_model_mlx_peak_bytes", "The most MLX's active memory has been in the "
                              "model's worker since it started.", labels=model),
            GaugeMetricFamily("mlx_router_model_mlx_cache_bytes", "Freed buffers MLX keeps for reuse in the "
                              "model's worker.", labels=model),
            GaugeMetricFamily("mlx_router_models_resident", "Models resident now (defaults.cache_size bounds it)."),
            GaugeMetricFamily("mlx_router_memory_budget_bytes", "Memory budget of all resident models."),
            GaugeMetricFamily("mlx_router_memory_resident_bytes", "Sum of the resident models' costs."),
            GaugeMetricFamily("mlx_router_memory_total_bytes", "System memory."),
            GaugeMetricFamily("mlx_router_memory_available_bytes", "System memory available."),
            GaugeMetricFamily("mlx_router_swap_used_percent", "Swap in use, percent."),
            GaugeMetricFamily("mlx_router_memory_pressure_level", "Memory pressure: 0 normal, 1 moderate, 2 high, "
                              "3 critical."),
            GaugeMetricFamily("mlx_router_memory_pressure", "1 for the current memory-pressure level.",
                              labels=["level"]),
        ]
