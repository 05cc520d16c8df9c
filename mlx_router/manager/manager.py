"""``MLXModelManager``: the lifecycle of every model the router serves.

Each model is UNLOADED → LOADING → READY → UNLOADING, or FAILED with a reason. Loads are
single-flight (concurrent first requests share one load). The parts, each with one owner:

* :class:`~mlx_router.manager.residency.Residency`: the resident table, states, reservations,
  draining and retiring models, making room (the pure policy decides), unloading, waiting;
* :class:`~mlx_router.manager.supply.WorkerSupply`: engines for loads, the spare worker, GGUF
  imports (all MLX work happens in child processes);
* :func:`~mlx_router.manager.reload_plan.plan_reload`: what a configuration reload changes,
  as a pure diff this class applies;
* :class:`~mlx_router.manager.model_settings.ResolvedModelSettings`: each model's settings,
  resolved once.

This class holds the registry, pins and aliases, admits requests (:meth:`acquire`:
backpressure, waiting for a turn, single-flight loads), runs the keep-alive loop and writes the
typed reports (:mod:`mlx_router.manager.reports`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from mlx_router import __version__
from mlx_router.config.settings import ConfigError, Settings
from mlx_router.engine.client import EngineFailure, WorkerClient
from mlx_router.engine.distributed import host_shares, this_machine_names
from mlx_router.engine.protocol import ClientFactory, Engine
from mlx_router.engine.types import BatchOptions, DistributedOptions, LoadInfo, WorkerOptions
from mlx_router.errors import (
    Conflict,
    InsufficientMemory,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    Overloaded,
    RouterError,
    redact_paths,
)
from mlx_router.manager.aliases import Aliases
from mlx_router.manager.memory import MemorySnapshot, ResourceMonitor, memory_budget_bytes
from mlx_router.manager.model_settings import ResolvedModelSettings, resolve_model_settings
from mlx_router.manager.registry import (
    EMBEDDED_MODEL_ID,
    ModelEntry,
    build_registry,
    directory_signature,
    kv_allowance_bytes,
)
from mlx_router.manager.reload_plan import ReloadedModels, plan_reload
from mlx_router.manager.reports import (
    AdminModelList,
    AdminModelRow,
    GroupReport,
    HealthReport,
    LoadedModelReport,
    MemoryRequirements,
    ModelInfo,
    ModelParameters,
    ModelStats,
    RankReport,
    Readiness,
    RequestCounts,
)
from mlx_router.manager.residency import Residency, ResidentModel, RoomRules
from mlx_router.manager.state import ManagerEvent, ModelState
from mlx_router.manager.supply import WorkerSupply

__all__ = ["EMBEDDED_MODEL_ID", "LoadedModel", "MLXModelManager", "ManagerEvent", "ModelState", "ModelStats"]

logger = logging.getLogger(__name__)

MAX_MODEL_ID = 256
GB = 1024**3


@dataclass(frozen=True)
class LoadedModel:
    """A READY model handed to one request for its duration."""

    entry: ModelEntry
    client: Engine
    load_info: LoadInfo


def _plausible_id(model_id: str) -> bool:
    """Ids are registry names: bounded, and never shaped like a path."""
    return (
        0 < len(model_id) <= MAX_MODEL_ID
        and not model_id.startswith(("/", "~"))
        and "\\" not in model_id
        and "\x00" not in model_id
        and ".." not in model_id.split("/")
    )


class MLXModelManager:
    """Registry, lifecycle and reports of models (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_factory: ClientFactory | None = None,
        monitor: ResourceMonitor | None = None,
    ) -> None:
        self.settings = settings
        self.monitor = monitor or ResourceMonitor(settings.defaults)
        self.supply = WorkerSupply(
            client_factory=client_factory,
            spare_worker=settings.defaults.spare_worker,
            pytorch=settings.defaults.worker_pytorch,
        )
        self.residency = Residency(
            cost_of=lambda resident: self.cost_bytes(resident.entry),
            is_pinned=lambda model_id: model_id in self.pinned,
            is_kept=lambda model_id: model_id == self.default_model,
            emit=self._emit,
        )
        self._closing = False
        self._shutting_down = False
        """The server drains before it stops: a worker that ends then is not started again."""
        self.entries: dict[str, ModelEntry] = {}
        self.aliases = Aliases.from_config(settings.aliases)
        """Other names for served models (``aliases``), checked against the registry at start."""
        self._views: dict[str, tuple[ModelEntry, ResolvedModelSettings]] = {}
        """Each entry's resolved settings, built on first use (new entries, new views)."""
        self.pinned: set[str] = set()
        self._loading: dict[str, asyncio.Task[ResidentModel]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._scanned_at = 0.0
        self._scanned_signature: tuple[tuple[str, int, bool], ...] = ()
        self.budget_bytes = memory_budget_bytes(settings.defaults)
        self._demand: dict[str, int] = {}
        """Sequences per model running or waiting (loading included), for backpressure."""
        self.default_model: str | None = settings.defaults.model
        """Preloaded and kept: evicted only after every other idle model (and restarted at once
        after a crash); the embedded model takes this role when it is the fallback."""
        self.started = False
        """:meth:`start` has finished (the default model's first load included)."""
        self.started_at = time.time()
        self.worker_restarts = 0
        self.loads = 0
        self.listeners: list[Callable[[ManagerEvent], None]] = []
        """Called with every :class:`ManagerEvent` (loads, evictions, worker exits)."""
        self.on_resolved: list[Callable[[str], None]] = []
        """Called with the served id each request resolved to (the API notes it for metrics)."""
        self._expiry: asyncio.Task[None] | None = None

    @property
    def states(self) -> dict[str, ModelState]:
        return self.residency.states

    @property
    def failures(self) -> dict[str, str]:
        return self.residency.failures

    def _emit(self, event: ManagerEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener must never break the lifecycle
                logger.exception("Listener failed on %s", event)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A background task, cancelled at close."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---------------------------------------------------------------- registry

    def refresh_registry(self, *, keep_resident: bool = True) -> None:
        """Re-read config and model directory; states of known models are kept.

        Loaded models stay known even if their folder went away meanwhile, unless
        ``keep_resident`` is false (a configuration reload that removed them)."""
        self._scanned_at = time.monotonic()
        self._scanned_signature = directory_signature(self.settings.model_dir)
        entries = build_registry(self.settings.models, self.settings.model_dir)
        resident = self.residency.resident
        kept = {m: self.entries[m] for m in resident if m in self.entries} if keep_resident else {}
        self.entries = {**kept, **entries}
        for model_id in self.entries:
            self.states.setdefault(model_id, ModelState.UNLOADED)

    def refresh_listing(self) -> None:
        """Rescan the model directory for a listing when its top level changed (one ``stat`` per
        entry: a folder added, removed or filled in) or ``defaults.rescan_interval`` seconds have
        passed since the last scan, so ``GET /v1/models`` shows what is there now."""
        if (
            time.monotonic() - self._scanned_at >= self.settings.defaults.rescan_interval
            or directory_signature(self.settings.model_dir) != self._scanned_signature
        ):
            self.refresh_registry()

    def model_settings(self, entry: ModelEntry) -> ResolvedModelSettings:
        """The entry's settings with ``defaults`` applied, resolved once per entry (a reload or a
        rescan builds new entries, whose views are resolved against the settings of then)."""
        cached = self._views.get(entry.id)
        if cached is None or cached[0] is not entry:
            cached = (entry, resolve_model_settings(entry, self.settings.defaults, self.budget_bytes))
            self._views[entry.id] = cached
        return cached[1]

    def resolve(self, model_id: str) -> ModelEntry:
        """The entry for a requested id or alias (``aliases``); unknown ids are a 404 that
        touches nothing.

        An unknown id rescans the model directory first (at most every
        ``defaults.rescan_interval`` seconds), so new folders appear without a restart."""
        if not _plausible_id(model_id):
            raise InvalidRequest(
                f"Invalid model id: ids are names from GET /v1/models (at most {MAX_MODEL_ID} characters, no paths).",
                param="model",
            )
        entry = self._lookup(model_id)
        if entry is None and time.monotonic() - self._scanned_at >= self.settings.defaults.rescan_interval:
            self.refresh_registry()
            entry = self._lookup(model_id)
        if entry is None:
            available = ", ".join(sorted(self.entries)) or "none"
            alias = self.aliases.match(model_id)
            if alias is not None:
                raise ModelNotFound(
                    f"The model {model_id!r} is an alias (aliases.{alias[0]}) of {alias[1]!r}, which is not served "
                    f"now. Available models: {available}.",
                    param="model",
                )
            raise ModelNotFound(
                f"The model {model_id!r} does not exist. Available models: {available}.", param="model"
            )
        for listener in self.on_resolved:
            listener(entry.id)
        return entry

    def _lookup(self, model_id: str) -> ModelEntry | None:
        """A served id first, else the model an alias names."""
        entry = self.entries.get(model_id)
        if entry is None and (alias := self.aliases.match(model_id)) is not None:
            entry = self.entries.get(alias[1])
        return entry

    # ---------------------------------------------------------------- start and stop

    async def start(self) -> None:
        """Build the registry, import the embedded model if nothing else exists, preload."""
        self.refresh_registry()
        if not self.entries and self.settings.defaults.embedded_model:
            await self.supply.import_embedded(self.settings.model_dir)
            self.refresh_registry()
            if self.default_model is None and EMBEDDED_MODEL_ID in self.entries:
                self.default_model = EMBEDDED_MODEL_ID
        logger.info("Serving %d model(s): %s", len(self.entries), ", ".join(sorted(self.entries)) or "none")
        default = self.default_model
        if default and default not in self.entries:
            raise ConfigError(
                f"defaults.model: {default!r} is not a known model. Known models: "
                f"{', '.join(sorted(self.entries)) or 'none'}. Fix defaults.model or add the model "
                f"under models / the model directory."
            )
        self.aliases.check(self.entries)
        self.pinned.update(mid for mid, e in self.entries.items() if self.model_settings(e).pin)
        preload = [default] if default else []
        preload += [mid for mid, e in sorted(self.entries.items()) if self._preloads(e) and mid != default]
        for model_id in preload:
            try:
                async with self.acquire(model_id):
                    pass
            except RouterError as exc:
                # Serve the other models; the next request for this one tries again.
                logger.error("Preloading %s failed: %s", model_id, exc.message)
        self.started = True
        self.supply.start_spare()
        self._start_expiry()

    async def close(self) -> None:
        self._closing = True
        for task in [*self._background, *self._loading.values()]:
            task.cancel()
        await self.supply.close()
        for model_id in list(self.residency.resident):
            await self.residency.unload(model_id, reason="shutdown")

    def _preloads(self, entry: ModelEntry) -> bool:
        """Loaded at start (and when a reload sets it): pinned or ``preload``."""
        view = self.model_settings(entry)
        return view.pin or view.preload

    def _kept(self, model_id: str) -> bool:
        """Pinned models and the default model: loaded at start, again at once when lost (a crash,
        a reload that changed them), and never unloaded for being idle (``keep_alive``). Only the
        pinned ones are also never evicted to make room."""
        return model_id in self.pinned or model_id == self.default_model

    def _restarts_at_once(self, model_id: str) -> bool:
        return self._kept(model_id) and model_id in self.entries and not (self._closing or self._shutting_down)

    def begin_shutdown(self) -> None:
        """The server is draining (new requests get 503): models whose workers end are not
        loaded again, since nothing could use them."""
        self._shutting_down = True

    # ---------------------------------------------------------------- keep-alive

    def _start_expiry(self) -> None:
        """Run the keep-alive loop once some model has a keep-alive (at start or after a reload)."""
        if self._expiry is not None or self._closing:
            return
        if any(self.model_settings(e).keep_alive for e in self.entries.values()) or self.settings.defaults.keep_alive:
            self._expiry = self._spawn(self._expire_idle_loop())

    def keep_alive(self, model_id: str) -> float:
        """Seconds this model may stay idle before it is unloaded (0: no limit)."""
        resident = self.residency.resident.get(model_id)
        entry = resident.entry if resident is not None else self.entries.get(model_id)
        return self.model_settings(entry).keep_alive if entry is not None else self.settings.defaults.keep_alive

    async def _expire_idle_loop(self) -> None:
        """Unload idle models whose keep-alive has run out (not pinned ones, not the default model)."""
        while True:
            resident = self.residency.resident
            limits = [self.keep_alive(mid) for mid in resident] or [self.settings.defaults.keep_alive]
            await asyncio.sleep(max(0.2, min((t for t in limits if t > 0), default=5.0) / 4))
            now = time.monotonic()
            for model_id, model in list(resident.items()):
                ttl = self.keep_alive(model_id)
                if ttl and not model.in_flight and not self._kept(model_id) and now - model.last_used >= ttl:
                    await self.residency.unload(model_id, reason=f"idle for {ttl:g} s (keep_alive)")

    # ---------------------------------------------------------------- admitting requests

    @asynccontextmanager
    async def acquire(self, model_id: str, sequences: int = 1) -> AsyncIterator[LoadedModel]:
        """Hold a READY model for one request of ``sequences`` sequences; it cannot be unloaded
        while held. Beyond the model's batch plus queue, the request is refused with 429."""
        entry = self.resolve(model_id)
        limit = self.queue_limit(entry)
        demand = self._demand.get(entry.id, 0)
        if demand + sequences > limit:
            raise Overloaded(
                f"Model {entry.id!r} is at capacity ({demand} sequences running or queued, limit {limit}: "
                "max_batch_size + max_queue). Retry shortly.",
                retry_after=1,
            )
        self._demand[entry.id] = demand + sequences
        residency = self.residency
        try:
            if residency.held(entry.id):
                # Another model waits to take this one's place (its queued requests go first), or
                # a reload changed this one's settings (it reloads once its running requests end).
                model = entry.id

                def its_turn() -> bool:
                    return not residency.held(model)

                await residency.wait_for(its_turn, f"model {model!r} to take its turn", self.settings.defaults.swap_wait)
                entry = self.resolve(entry.id)  # a reload may have replaced or removed it meanwhile
            resident = await self._ensure_loaded(entry)
            resident.in_flight += 1
            try:
                yield LoadedModel(entry, resident.client, resident.load_info)
            finally:
                resident.in_flight -= 1
                resident.last_used = time.monotonic()
                if not resident.in_flight:
                    residency.notify()
        finally:
            self._demand[entry.id] -= sequences

    def queue_limit(self, entry: ModelEntry) -> int:
        """Sequences a model may have running or waiting: its batch plus its queue."""
        return self.model_settings(entry).queue_limit

    def max_tokens_cap(self, entry: ModelEntry) -> int | None:
        """The per-model cap for the current memory-pressure level, if the model has caps (the
        memory is read only then: this runs for every request)."""
        view = self.model_settings(entry)
        return view.max_tokens_cap(self.monitor.snapshot().level) if view.memory_pressure_max_tokens else None

    # ---------------------------------------------------------------- loading

    async def _ensure_loaded(self, entry: ModelEntry) -> ResidentModel:
        """Single-flight: the load runs as its own task; every caller awaits it shielded, so a
        caller that goes away (cancelled, timed out) never cancels the load for the others."""
        resident = self.residency.resident.get(entry.id)
        if resident is not None and resident.client.alive:
            return resident
        task = self._loading.get(entry.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(entry), name=f"load:{entry.id}")
            self._loading[entry.id] = task
            task.add_done_callback(functools.partial(self._load_done, entry.id))
        return await asyncio.shield(task)

    def _load_done(self, model_id: str, task: asyncio.Task[ResidentModel]) -> None:
        if self._loading.get(model_id) is task:
            del self._loading[model_id]
        if not task.cancelled():
            task.exception()  # retrieved here: callers that are still waiting re-raise it themselves

    def _room_rules(self) -> RoomRules:
        defaults = self.settings.defaults
        return RoomRules(self.budget_bytes, defaults.cache_size, defaults.swap_wait)

    async def _load(self, entry: ModelEntry) -> ResidentModel:
        residency = self.residency
        residency.mark_loading(entry.id)
        load_started = time.perf_counter()
        signature = self.load_signature(entry)
        try:
            await self._room_on_other_hosts(entry)
            await residency.make_room(
                entry.id, self.cost_bytes(entry), self._room_rules(), lambda: self.monitor.snapshot().level
            )
            path = await self.supply.materialize(entry, self.settings.model_dir)
            client = self.supply.engine(replace(signature, model_path=str(path)), self._on_worker_exit)
            if isinstance(client, WorkerClient):  # a test's fake engine counts nothing
                client.on_cancelled = lambda model_id, tokens: self._emit(
                    ManagerEvent("cancelled", model_id, tokens=tokens)
                )
            info = await client.start(self.settings.server.worker_start_timeout)
        except EngineFailure as exc:
            self._emit(ManagerEvent("load_failed", entry.id, time.perf_counter() - load_started))
            reason = redact_paths(exc.error.message)
            residency.mark_failed(entry.id, reason)
            if exc.error.kind == "out_of_memory":
                raise InsufficientMemory(f"Model {entry.id!r} does not fit in memory: {reason}") from None
            raise ModelLoadFailed(f"Model {entry.id!r} failed to load: {reason}") from None
        except (asyncio.CancelledError, RouterError):
            residency.states[entry.id] = ModelState.UNLOADED  # shutdown while loading, or no room
            raise
        except Exception as exc:  # noqa: BLE001 (any other load failure is the model's, reported as FAILED)
            self._emit(ManagerEvent("load_failed", entry.id, time.perf_counter() - load_started))
            logger.error("model %s failed to load: %s: %s", entry.id, exc.__class__.__name__, redact_paths(str(exc)[:300]))
            residency.mark_failed(entry.id, redact_paths(str(exc)[:300]) or "the model could not be loaded")
            raise ModelLoadFailed(f"Model {entry.id!r} failed to load: {residency.failures[entry.id]}") from None
        finally:
            residency.release(entry.id)
        self.loads += 1
        wall = time.perf_counter() - load_started
        resident = ResidentModel(client, info, entry, signature)
        residency.add(entry.id, resident)
        self._emit(ManagerEvent("loaded", entry.id, wall))
        logger.info(
            "Loaded %s in %.2f s (weights %.2f s; %.2f GB on %s, context %d)",
            entry.id,
            wall,
            info.load_seconds,
            info.weight_bytes / GB,
            info.backend,
            info.context_length,
        )
        return resident

    def load_signature(self, entry: ModelEntry) -> WorkerOptions:
        """The options a worker is started with (``model_path``: the entry's own path, before a
        GGUF import): when a reload changes them, the model reloads."""
        view = self.model_settings(entry)
        return WorkerOptions(
            model_id=entry.id,
            model_path=str(entry.path),
            context_length=view.context_length,
            chat_template=None if view.chat_template == "auto" else view.chat_template,
            warmup_tokens=self.settings.defaults.warmup_tokens,
            batch=self.batch_options(entry),
            vision=entry.supports_vision,
            embedding_model=entry.is_embedding_model,
            distributed=entry.config.distributed.to_options() if entry.config.distributed else None,
        )

    def batch_options(self, entry: ModelEntry) -> BatchOptions:
        """Batch limits of a model: its own settings over the defaults."""
        defaults, view = self.settings.defaults, self.model_settings(entry)
        return BatchOptions(
            max_batch_size=view.max_batch_size,
            prefill_batch_size=defaults.prefill_batch_size,
            prefill_step_size=defaults.prefill_step_size,
            prefill_buckets=defaults.prefill_buckets,
            idle_work_delay=defaults.idle_work_delay,
            buffer_cache_bytes=defaults.buffer_cache_bytes,
            prefix_cache_bytes=view.prefix_cache_bytes,
            prefix_cache_entries=defaults.prefix_cache_entries,
            prefix_cache_block_tokens=defaults.prefix_cache_block_tokens,
            prefix_cache_directory=str(self.settings.prefix_cache_dir),
            prefix_cache_disk_bytes=0 if entry.supports_vision else defaults.prefix_cache_disk_bytes,
            prefix_cache_flush_seconds=defaults.prefix_cache_flush_seconds,
            grammar_cache_entries=defaults.grammar_cache_entries,
        )

    def cost_bytes(self, entry: ModelEntry) -> int:
        """What a model takes resident: its weights (as MLX measured them once loaded, else the
        weight files) plus its KV allowance (one context's KV, capped, and its prefix cache).
        For a model served by a group: the part on this machine's ranks (the budget is per host)."""
        shares = self.group_costs(entry)
        if shares is not None:
            local = this_machine_names()
            return sum(cost for host, cost in shares.items() if host in local)
        return self._total_cost(entry)

    def _total_cost(self, entry: ModelEntry) -> int:
        resident = self.residency.resident.get(entry.id)
        view = self.model_settings(entry)
        weights = resident.load_info.weight_bytes if resident else entry.weight_bytes
        if view.required_memory_bytes is not None:
            weights = view.required_memory_bytes
        return weights + kv_allowance_bytes(entry, self.settings.defaults, view.prefix_cache_bytes)

    def _group_options(self, entry: ModelEntry) -> DistributedOptions | None:
        resident = self.residency.resident.get(entry.id)
        if resident is not None and resident.signature.distributed is not None:
            return resident.signature.distributed
        return entry.config.distributed.to_options() if entry.config.distributed else None

    def group_costs(self, entry: ModelEntry) -> dict[str, int] | None:
        """Bytes per host of a model served by a group (None for a one-process model)."""
        options = self._group_options(entry)
        if options is None:
            return None
        resident = self.residency.resident.get(entry.id)
        return host_shares(options, self._total_cost(entry), resident.load_info if resident else None)

    async def _room_on_other_hosts(self, entry: ModelEntry) -> None:
        """A group's ranks on other machines must fit each host's budget next to the groups
        already there (only groups use other hosts): idle, unpinned ones there are unloaded, least
        recently used first; if busy or pinned ones stand in the way, 507 naming the host."""
        shares = self.group_costs(entry)
        local = this_machine_names()
        residents = self.residency.resident
        for host, need in (shares or {}).items():
            while host not in local:
                holders = {
                    mid: costs[host]
                    for mid, r in residents.items()
                    if mid != entry.id and (costs := self.group_costs(r.entry)) and host in costs
                }
                if need + sum(holders.values()) <= self.budget_bytes:
                    break
                idle = sorted(
                    (residents[mid].last_used, mid) for mid in holders if not residents[mid].in_flight and mid not in self.pinned
                )
                if not idle:
                    held = f"is held by {', '.join(sorted(holders))}" if holders else "is smaller"
                    raise InsufficientMemory(
                        f"Model {entry.id!r} needs {need / GB:.2f} GB on host {host}, whose budget of "
                        f"{self.budget_bytes / GB:.2f} GB {held}. Unload or unpin a model there, or raise "
                        "defaults.memory_budget_gb."
                    )
                await self.residency.unload(idle[0][1], reason=f"making room on {host} for {entry.id}")
                self._emit(ManagerEvent("evicted", idle[0][1], reason="room"))

    def group_info(self, model_id: str) -> GroupReport | None:
        """Backend, strategy, hosts and (once loaded) ranks of a model served by a group."""
        resident = self.residency.resident.get(model_id)
        entry = resident.entry if resident is not None else self.entries.get(model_id)
        options = self._group_options(entry) if entry is not None else None
        if options is None:
            return None
        ranks = resident.load_info.ranks if resident is not None else ()
        return GroupReport(
            backend=options.backend,
            strategy=options.strategy,
            hosts=list(options.hosts),
            ranks=[RankReport(r.rank, r.host, r.hostname, r.pid, round(r.weight_bytes / GB, 3), r.backend) for r in ranks],
        )

    def _on_worker_exit(self, client: Engine, reason: str) -> None:
        """A worker died: its requests already got errors; pinned models and the default model
        come back at once."""
        for model_id in self.residency.lost(client):
            self.worker_restarts += 1
            self.residency.mark_failed(model_id, reason)
            self._emit(ManagerEvent("worker_exit", model_id))
            if self._restarts_at_once(model_id):
                self._spawn(self._reload_kept(model_id))

    async def _reload_kept(self, model_id: str) -> None:
        try:
            await self._ensure_loaded(self.entries[model_id])
        except Exception as exc:  # noqa: BLE001 (the state already says FAILED with the reason)
            logger.error("Restarting %s failed: %s", model_id, exc)

    # ---------------------------------------------------------------- admin

    async def load(self, model_id: str) -> None:
        """Load a model now (as a first request would)."""
        async with self.acquire(model_id):
            pass

    async def unload_idle_model(self, model_id: str) -> None:
        """Unload a model on request; refused while it serves requests or is pinned."""
        model_id = self.resolve(model_id).id
        resident = self.residency.resident.get(model_id)
        if resident is None:
            return
        if model_id in self.pinned:
            raise Conflict(f"Model {model_id!r} is pinned; unpin it first.", param="model")
        if resident.in_flight:
            raise Conflict(f"Model {model_id!r} has {resident.in_flight} request(s) in flight.", param="model")
        await self.residency.unload(model_id, reason="admin request")

    def set_pinned(self, model_id: str, pinned: bool) -> None:
        model_id = self.resolve(model_id).id
        (self.pinned.add if pinned else self.pinned.discard)(model_id)

    # ---------------------------------------------------------------- configuration reload

    async def reload(self, settings: Settings) -> ReloadedModels:
        """Serve the models of a re-read configuration without dropping running requests.

        Added models are served at once. A removed model gets 404 for new requests; if resident,
        it finishes its requests, then unloads. A model whose load-time settings changed (path,
        context_length, chat_template, batch and prefix-cache sizes, warmup_tokens) finishes its
        requests, then unloads; new requests for it wait and load it with the new settings (a
        pinned one is loaded again at once). Other settings apply from the next request. Returns
        the ids added, removed, changed and reloading. Raises :class:`ConfigError` (nothing
        applied) when the default model would no longer be served or an alias names no model.
        """
        entries = build_registry(settings.models, settings.model_dir)
        aliases = Aliases.from_config(settings.aliases)
        aliases.check(entries)
        default = self.default_model
        if default and default not in entries:
            raise ConfigError(
                f"defaults.model: the default model {default!r} would no longer be served (its entry is gone from "
                "'models' or from the model directory). Keep it, or change defaults.model and restart."
            )
        residency = self.residency
        old = self.entries
        running = {mid: r.signature for mid, r in residency.resident.items()}
        running |= {mid: self.load_signature(old[mid]) for mid in self._loading if mid in old and mid not in running}
        old_pins = {mid for mid, e in old.items() if e.config.pin}
        old_preloads = {mid for mid, e in old.items() if e.config.pin or e.config.preload}
        self.settings = settings
        self.aliases = aliases
        self.monitor.defaults = settings.defaults
        self.budget_bytes = memory_budget_bytes(settings.defaults)
        self.refresh_registry(keep_resident=False)
        plan = plan_reload(
            old,
            self.entries,
            running=running,
            wanted={mid: self.load_signature(self.entries[mid]) for mid in running if mid in self.entries},
            resident=set(residency.resident),
            loading=set(self._loading),
            old_pins=old_pins,
            new_pins={mid for mid, e in self.entries.items() if self.model_settings(e).pin},
            old_preloads=old_preloads,
            new_preloads={mid for mid, e in self.entries.items() if self._preloads(e)},
        )
        for mid in plan.forget:
            residency.forget(mid)
        self.pinned = (self.pinned - plan.unpin) | plan.pin
        residency.retiring |= plan.stale
        for mid in sorted(plan.stale):
            resident = residency.resident.get(mid)
            if mid not in self._loading and (resident is None or not resident.in_flight):
                await self._retire(mid)
            else:
                self._spawn(self._retire(mid))
        for mid in plan.preload:
            if mid not in residency.resident and mid not in residency.retiring and mid not in self._loading:
                self._spawn(self._load_quietly(mid))
        self._start_expiry()
        logger.info(
            "Configuration reloaded: %d model(s) added, %d removed, %d changed, %d reloading",
            len(plan.added), len(plan.removed), len(plan.changed), len(plan.reloading),
        )
        return plan.models

    async def _retire(self, model_id: str) -> None:
        """Wait until a stale model has no load in progress and no request in flight, unload
        it, then start loading it again if it is kept (``retiring`` holds new requests
        meanwhile)."""
        residency = self.residency
        try:
            while True:
                changed = residency.next_change()
                loading = self._loading.get(model_id)
                resident = residency.resident.get(model_id)
                if loading is None and (resident is None or not resident.in_flight):
                    break
                if loading is not None:
                    await asyncio.wait({loading})
                else:
                    await changed.wait()
            if resident is not None:
                await residency.unload(model_id, reason="configuration reloaded")
        finally:
            residency.retiring.discard(model_id)
            if model_id not in self.entries and model_id not in residency.resident:
                residency.forget(model_id)
            residency.notify()
        self._emit(ManagerEvent("retired", model_id))
        if self._restarts_at_once(model_id):
            self._spawn(self._load_quietly(model_id))

    async def _load_quietly(self, model_id: str) -> None:
        """A background load (pinned or preloaded models after a reload); failures are logged
        and show as the model's state."""
        try:
            await self.load(model_id)
        except RouterError as exc:
            logger.error("Loading %s after the configuration reload failed: %s", model_id, exc.message)

    # ---------------------------------------------------------------- reporting

    @property
    def resident_count(self) -> int:
        return len(self.residency.resident)

    def readiness(self, *, draining: bool = False) -> Readiness:
        """Whether the server can serve requests, and why not: it has started and is not
        draining, serves some model that fits the memory budget, and not every model's last
        load failed. Which models are resident does not matter: any servable model loads on
        request."""
        if draining:
            return Readiness("unavailable", "the server is shutting down")
        if not self.started:
            default = self.default_model
            return Readiness("unavailable", f"starting: the default model {default} is loading" if default else "starting")
        if not self.entries:
            return Readiness("unavailable", "no models are available")
        if not any(self.cost_bytes(entry) <= self.budget_bytes for entry in self.entries.values()):
            return Readiness(
                "unavailable",
                f"no model fits the memory budget of {self.budget_bytes / GB:.2f} GB (defaults.memory_budget_gb)",
            )
        if all(self.states.get(mid) == ModelState.FAILED for mid in self.entries):
            failures = "; ".join(f"{mid} failed: {self.failures.get(mid, 'unknown reason')}" for mid in sorted(self.entries)[:3])
            return Readiness(
                "unavailable", f"every model's last load failed ({failures}); the next request for a model tries again"
            )
        return Readiness("ok")

    def model_stats(self) -> list[ModelStats]:
        """Every served model, and resident models a reload removed (until they unload)."""
        stats = []
        residents = self.residency.resident
        for model_id in sorted(set(self.entries) | set(residents)):
            resident = residents.get(model_id)
            entry = resident.entry if resident is not None else self.entries[model_id]
            sequences = self._demand.get(model_id, 0)
            running = min(resident.client.in_flight, self.batch_options(entry).max_batch_size) if resident else 0
            stats.append(
                ModelStats(
                    id=model_id,
                    state=self.residency.state(model_id).value,
                    pinned=model_id in self.pinned,
                    resident=resident is not None,
                    in_flight=resident.in_flight if resident else 0,
                    sequences=sequences,
                    queued=max(0, sequences - running),
                    weight_bytes=resident.load_info.weight_bytes if resident else entry.weight_bytes,
                    cost_bytes=self.cost_bytes(entry),
                    mlx_memory=resident.client.memory if resident else None,
                )
            )
        return stats

    def admin_rows(self, stats_list: list[ModelStats] | None = None) -> list[AdminModelRow]:
        """One row per model (``stats_list``: :meth:`model_stats` already taken)."""
        now = time.monotonic()
        rows = []
        for stats in self.model_stats() if stats_list is None else stats_list:
            resident = self.residency.resident.get(stats.id)
            rows.append(
                AdminModelRow(
                    id=stats.id,
                    state=stats.state,
                    failure_reason=self.failures.get(stats.id),
                    pinned=stats.pinned,
                    in_flight=stats.in_flight,
                    sequences=stats.sequences,
                    queued=stats.queued,
                    idle_seconds=round(now - resident.last_used, 1) if resident else None,
                    cost_gb=round(stats.cost_bytes / GB, 3),
                    weight_gb=round(stats.weight_bytes / GB, 3),
                    mlx_active_gb=round(memory.active_bytes / GB, 3) if (memory := stats.mlx_memory) else None,
                    mlx_peak_gb=round(memory.peak_bytes / GB, 3) if memory else None,
                    keep_alive=self.keep_alive(stats.id),
                    pid=resident.client.pid if resident else None,
                    retiring=stats.id in self.residency.retiring,
                    served=stats.id in self.entries,
                    distributed=self.group_info(stats.id),
                )
            )
        return rows

    def admin_list(self) -> AdminModelList:
        """``GET /v1/admin/models``."""
        return AdminModelList(self.admin_rows(), round(self.budget_bytes / GB, 3), self.settings.defaults.cache_size)

    def model_info(self, entry: ModelEntry, snapshot: MemorySnapshot | None = None) -> ModelInfo:
        """The old project's ``memory_requirements`` and ``parameters`` plus state (``snapshot``:
        one memory reading shared by a whole listing)."""
        resident = self.residency.resident.get(entry.id)
        view = self.model_settings(entry)
        measured = resident.load_info.weight_bytes if resident else entry.weight_bytes
        required_gb = round(measured / GB, 3) if view.required_memory_gb is None else view.required_memory_gb
        snapshot = snapshot or self.monitor.snapshot()
        budget_gb = snapshot.available_bytes / GB * self.settings.defaults.safety_margin
        can_load = resident is not None or required_gb <= budget_gb
        if resident is not None:
            reason = "Loaded"
        elif can_load:
            reason = "Available for loading"
        else:
            reason = f"Needs {required_gb:.2f} GB, {budget_gb:.2f} GB usable now"
        return ModelInfo(
            state=self.residency.state(entry.id).value,
            failure_reason=self.failures.get(entry.id),
            capabilities=entry.capabilities,
            memory_requirements=MemoryRequirements(
                required_gb=required_gb,
                weight_bytes=measured,
                measured_from="mlx_active_memory" if resident else "weight_files",
                can_load_now=can_load,
                load_status_reason=reason,
            ),
            parameters=ModelParameters(
                max_tokens=view.max_tokens,
                chat_template=view.chat_template,
                context_length=resident.load_info.context_length if resident else view.context_length,
            ),
            distributed=self.group_info(entry.id),
        )

    def health(self, requests: RequestCounts, *, draining: bool = False) -> HealthReport:
        """``GET /v1/health`` (``requests``: the API's counts)."""
        snapshot = self.monitor.snapshot()
        loaded = [
            LoadedModelReport(
                id=mid,
                in_flight=r.in_flight,
                sequences=self._demand.get(mid, 0),
                pid=r.client.pid,
                weight_gb=round(r.load_info.weight_bytes / GB, 3),
                backend=r.load_info.backend,
                pinned=mid in self.pinned,
                default=mid == self.default_model,
                warming=getattr(r.client, "warming", False),
            )
            for mid, r in self.residency.resident.items()
        ]
        readiness = self.readiness(draining=draining)
        return HealthReport(
            status=readiness.status,
            reason=readiness.reason,
            version=__version__,
            uptime_seconds=round(time.time() - self.started_at, 1),
            requests=requests,
            memory=snapshot.to_dict(),
            pressure=snapshot.level,
            loaded_models=loaded,
            current_model=loaded[0].id if loaded else None,
            models={mid: state.value for mid, state in sorted(self.states.items())},
            spare_worker_pid=self.supply.spare_pid,
            loads=self.loads,
            worker_restarts=self.worker_restarts,
        )
