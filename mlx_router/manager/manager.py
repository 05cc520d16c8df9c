"""``MLXModelManager``: the lifecycle of every model the router serves.

Each model is UNLOADED → LOADING → READY → UNLOADING, or FAILED with a reason. Loads are
single-flight (concurrent first requests share one load). A model with requests in flight or
pinned is never unloaded to make room; the memory budget (and ``defaults.cache_size`` when set)
bounds how many are resident; the default model is kept resident while room allows.
All MLX work, GGUF imports included, happens in child processes.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from mlx_router.config.settings import ConfigError, Settings
from mlx_router.engine.client import EngineFailure, WorkerClient, openblas_library
from mlx_router.engine.types import BatchOptions, LoadInfo, WorkerOptions
from mlx_router.errors import (
    Conflict,
    InsufficientMemory,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    Overloaded,
    RouterError,
    ServiceUnavailable,
    redact_paths,
)
from mlx_router.manager.aliases import Aliases
from mlx_router.manager.memory import MemorySnapshot, ResourceMonitor, memory_budget_bytes
from mlx_router.manager.model_settings import ResolvedModelSettings, resolve_model_settings
from mlx_router.manager.policy import Resident, plan_eviction
from mlx_router.manager.registry import (
    EMBEDDED_MODEL_ID,
    IMPORT_DIR_NAME,
    ModelEntry,
    build_registry,
    directory_signature,
    kv_allowance_bytes,
)
from mlx_router.metrics.context import note_model

__all__ = ["EMBEDDED_MODEL_ID", "LoadedModel", "MLXModelManager", "ManagerEvent", "ModelState", "ModelStats"]

logger = logging.getLogger(__name__)

MAX_MODEL_ID = 256
GB = 1024**3

ClientFactory = Callable[..., Any]


class ModelState(str, Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass
class _Resident:
    client: Any
    load_info: LoadInfo
    entry: ModelEntry
    """The entry it was loaded with (a reload may have replaced or removed the registry's)."""
    signature: WorkerOptions
    """Its worker's options (see :meth:`MLXModelManager.load_signature`)."""
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ManagerEvent:
    """Something that happened to a model, for listeners such as metrics."""

    kind: Literal["loaded", "load_failed", "evicted", "worker_exit", "retired"]
    """``retired``: a model that a configuration reload removed or changed has finished its
    requests and is unloaded."""
    model_id: str
    seconds: float = 0.0
    """Wall time of the load (``loaded``, ``load_failed``)."""
    reason: str = ""
    """``evicted``: ``room`` (made room for another model) or ``pressure`` (memory pressure)."""


@dataclass(frozen=True)
class ModelStats:
    """One model's state as numbers (for metrics and the status page)."""

    id: str
    state: str
    pinned: bool
    resident: bool
    in_flight: int
    """Requests holding the model."""
    sequences: int
    """Sequences running or waiting, loading included."""
    queued: int
    """Sequences waiting: for the model to load or take its turn, or in the worker beyond its batch."""
    weight_bytes: int
    cost_bytes: int


@dataclass(frozen=True)
class LoadedModel:
    """A READY model handed to one request for its duration."""

    entry: ModelEntry
    client: Any
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


def _import_gguf_job(src: str, dst: str, dequantize: bool) -> str:
    """Runs in a child process: GGUF → MLX folder (the router process never touches MLX)."""
    from mlx_router.importers.gguf import import_gguf

    return str(import_gguf(src, dst, dequantize=dequantize))


class MLXModelManager:
    """Registry, residency and health of models."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_factory: ClientFactory | None = None,
        monitor: ResourceMonitor | None = None,
    ) -> None:
        self.settings = settings
        self.monitor = monitor or ResourceMonitor(settings.defaults)
        self._blas = openblas_library()
        self._client_factory = client_factory or self._default_client
        self._spares = client_factory is None and settings.defaults.spare_worker
        """Keep a pre-started worker process ready (only with real workers)."""
        self._spare: WorkerClient | None = None
        self._closing = False
        self.entries: dict[str, ModelEntry] = {}
        self.aliases = Aliases.from_config(settings.aliases)
        self._views: dict[str, tuple[ModelEntry, ResolvedModelSettings]] = {}
        """Each entry's resolved settings, built on first use (new entries, new views)."""
        """Other names for served models (``aliases``), checked against the registry at start."""
        self.states: dict[str, ModelState] = {}
        self.failures: dict[str, str] = {}
        self.pinned: set[str] = set()
        self._resident: dict[str, _Resident] = {}
        self._loading: dict[str, asyncio.Task[_Resident]] = {}
        self._room_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._room_changed = asyncio.Event()
        """Set (and replaced) whenever a model goes idle, is unloaded or finishes loading."""
        self._draining: set[str] = set()
        """Resident models giving way to a waiting load: new requests for them wait their turn."""
        self._scanned_at = 0.0
        self._scanned_signature: tuple[tuple[str, int, bool], ...] = ()
        self._reserved: dict[str, int] = {}
        """Cost of loads in progress, counted against the budget until they finish."""
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
        self._retiring: set[str] = set()
        """Resident models whose configuration was removed or changed by a reload: they finish
        their requests, then unload; new requests for them wait (changed) or get 404 (removed)."""
        self._expiry: asyncio.Task[None] | None = None

    def _emit(self, event: ManagerEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener must never break the lifecycle
                logger.exception("Listener failed on %s", event)

    # ---------------------------------------------------------------- registry

    def _default_client(self, options: WorkerOptions, on_exit: Callable[..., None]) -> WorkerClient:
        """A worker for a model load: the waiting spare when there is one (then a new spare
        starts in the background), else a new process."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive:
            spare.adopt(options, on_exit)
            self._start_spare()
            return spare
        return WorkerClient(options, on_exit=on_exit, blas_library=self._blas)

    def _start_spare(self) -> None:
        """Start a spare worker process (MLX imported, no model) in the background."""
        if not self._spares or self._spare is not None:
            return

        async def spawn() -> None:
            client = WorkerClient(WorkerOptions(model_id="spare", model_path=""), blas_library=self._blas)
            await client.spawn(spare=True)
            if self._spare is None and not self._closing:
                self._spare = client
            else:
                await client.stop(grace=1)

        task = asyncio.get_running_loop().create_task(spawn())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def refresh_registry(self, *, keep_resident: bool = True) -> None:
        """Re-read config and model directory; states of known models are kept.

        Loaded models stay known even if their folder went away meanwhile, unless
        ``keep_resident`` is false (a configuration reload that removed them)."""
        self._scanned_at = time.monotonic()
        self._scanned_signature = directory_signature(self.settings.model_dir)
        entries = build_registry(self.settings.models, self.settings.model_dir)
        kept = {m: self.entries[m] for m in self._resident if m in self.entries} if keep_resident else {}
        self.entries = {**kept, **entries}
        for model_id in self.entries:
            self.states.setdefault(model_id, ModelState.UNLOADED)

    async def start(self) -> None:
        """Build the registry, import the embedded model if nothing else exists, preload."""
        self.refresh_registry()
        if not self.entries and self.settings.defaults.embedded_model:
            await self._import_embedded()
            self.refresh_registry()
            if self.default_model is None and EMBEDDED_MODEL_ID in self.entries:
                self.default_model = EMBEDDED_MODEL_ID
        logger.info("Serving %d model(s): %s", len(self.entries), ", ".join(sorted(self.entries)) or "none")
        default = self.default_model
        if default:
            if default not in self.entries:
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
        self._start_spare()
        self._start_expiry()

    def _preloads(self, entry: ModelEntry) -> bool:
        """Loaded at start (and when a reload sets it): pinned or ``preload``."""
        view = self.model_settings(entry)
        return view.pin or view.preload

    def _start_expiry(self) -> None:
        """Run the keep-alive loop once some model has a keep-alive (at start or after a reload)."""
        if self._expiry is not None or self._closing:
            return
        if any(self.model_settings(e).keep_alive for e in self.entries.values()) or self.settings.defaults.keep_alive:
            self._expiry = self._spawn(self._expire_idle_loop())

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        """A background task, cancelled at close."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def model_settings(self, entry: ModelEntry) -> ResolvedModelSettings:
        """The entry's settings with ``defaults`` applied, resolved once per entry (a reload or a
        rescan builds new entries, whose views are resolved against the settings of then)."""
        cached = self._views.get(entry.id)
        if cached is None or cached[0] is not entry:
            cached = (entry, resolve_model_settings(entry, self.settings.defaults, self.budget_bytes))
            self._views[entry.id] = cached
        return cached[1]

    def keep_alive(self, model_id: str) -> float:
        """Seconds this model may stay idle before it is unloaded (0: no limit)."""
        resident = self._resident.get(model_id)
        entry = resident.entry if resident is not None else self.entries.get(model_id)
        return self.model_settings(entry).keep_alive if entry is not None else self.settings.defaults.keep_alive

    async def _expire_idle_loop(self) -> None:
        """Unload idle models whose keep-alive has run out (not pinned ones, not the default model)."""
        while True:
            limits = [self.keep_alive(mid) for mid in self._resident] or [self.settings.defaults.keep_alive]
            await asyncio.sleep(max(0.2, min((t for t in limits if t > 0), default=5.0) / 4))
            now = time.monotonic()
            for model_id, resident in list(self._resident.items()):
                ttl = self.keep_alive(model_id)
                if ttl and not resident.in_flight and not self._kept(model_id) and now - resident.last_used >= ttl:
                    await self.unload(model_id, reason=f"idle for {ttl:g} s (keep_alive)")

    async def _import_embedded(self) -> None:
        from mlx_router.importers.gguf import find_embedded_gguf

        gguf = find_embedded_gguf()
        if gguf is None:
            logger.warning("No model configured or discovered, and the embedded model package is not installed.")
            return
        target = self.settings.model_dir / EMBEDDED_MODEL_ID
        logger.info("Importing the embedded %s into the model directory (once)", EMBEDDED_MODEL_ID)
        started = time.perf_counter()
        await self._run_import(gguf, target)
        logger.info("Imported %s in %.1f s", EMBEDDED_MODEL_ID, time.perf_counter() - started)

    async def _run_import(self, src: Path, dst: Path) -> Path:
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Float32 is faster than 4-bit on a CPU with OpenBLAS; elsewhere keep the quantized weights.
        dequantize = self._blas is not None
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            return Path(await loop.run_in_executor(pool, _import_gguf_job, str(src), str(dst), dequantize))

    def refresh_listing(self) -> None:
        """Rescan the model directory for a listing when its top level changed (one ``stat`` per
        entry: a folder added, removed or filled in) or ``defaults.rescan_interval`` seconds have
        passed since the last scan, so ``GET /v1/models`` shows what is there now."""
        if (
            time.monotonic() - self._scanned_at >= self.settings.defaults.rescan_interval
            or directory_signature(self.settings.model_dir) != self._scanned_signature
        ):
            self.refresh_registry()

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
        note_model(entry.id)
        return entry

    def _lookup(self, model_id: str) -> ModelEntry | None:
        """A served id first, else the model an alias names."""
        entry = self.entries.get(model_id)
        if entry is None and (alias := self.aliases.match(model_id)) is not None:
            entry = self.entries.get(alias[1])
        return entry

    # ---------------------------------------------------------------- residency

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
                headers={"Retry-After": "1"},
            )
        self._demand[entry.id] = demand + sequences
        try:
            if entry.id in self._draining or entry.id in self._retiring:
                # Another model waits to take this one's place (its queued requests go first), or
                # a reload changed this one's settings (it reloads once its running requests end).
                await self._wait_for(
                    lambda: entry.id not in self._draining and entry.id not in self._retiring,
                    f"model {entry.id!r} to take its turn",
                )
                entry = self.resolve(entry.id)  # a reload may have replaced or removed it meanwhile
            resident = await self._ensure_loaded(entry)
            resident.in_flight += 1
            try:
                yield LoadedModel(entry, resident.client, resident.load_info)
            finally:
                resident.in_flight -= 1
                resident.last_used = time.monotonic()
                if not resident.in_flight:
                    self._notify_room()
        finally:
            self._demand[entry.id] -= sequences

    def _notify_room(self) -> None:
        """Wake loads and requests waiting for residency to change."""
        self._room_changed.set()
        self._room_changed = asyncio.Event()

    async def _wait_for(self, ready: Callable[[], bool], what: str) -> None:
        """Wait until ``ready()``, re-checked at every residency change, at most
        ``defaults.swap_wait`` seconds (then 503 with Retry-After)."""
        deadline = time.monotonic() + self.settings.defaults.swap_wait
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceUnavailable(
                    f"Waited {self.settings.defaults.swap_wait:g} s (defaults.swap_wait) for {what}; the models "
                    "it needs stayed busy. Retry shortly, or raise defaults.memory_budget_gb (or cache_size, if set).",
                    code="model_slots_busy",
                    headers={"Retry-After": "5"},
                )
            try:
                await asyncio.wait_for(self._room_changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def queue_limit(self, entry: ModelEntry) -> int:
        """Sequences a model may have running or waiting: its batch plus its queue."""
        return self.model_settings(entry).queue_limit

    async def _ensure_loaded(self, entry: ModelEntry) -> _Resident:
        """Single-flight: the load runs as its own task; every caller awaits it shielded, so a
        caller that goes away (cancelled, timed out) never cancels the load for the others."""
        resident = self._resident.get(entry.id)
        if resident is not None and resident.client.alive:
            return resident
        task = self._loading.get(entry.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(entry), name=f"load:{entry.id}")
            self._loading[entry.id] = task
            task.add_done_callback(lambda done, model_id=entry.id: self._load_done(model_id, done))
        return await asyncio.shield(task)

    def _load_done(self, model_id: str, task: asyncio.Task[_Resident]) -> None:
        if self._loading.get(model_id) is task:
            del self._loading[model_id]
        if not task.cancelled():
            task.exception()  # retrieved here: callers that are still waiting re-raise it themselves

    async def _load(self, entry: ModelEntry) -> _Resident:
        self.states[entry.id] = ModelState.LOADING
        self.failures.pop(entry.id, None)
        load_started = time.perf_counter()
        signature = self.load_signature(entry)
        try:
            await self._make_room(entry)
            path = await self._materialize(entry)
            options = replace(signature, model_path=str(path))
            client = self._client_factory(options, self._on_worker_exit)
            info = await client.start(self.settings.server.worker_start_timeout)
        except EngineFailure as exc:
            self._emit(ManagerEvent("load_failed", entry.id, time.perf_counter() - load_started))
            reason = redact_paths(exc.error.message)
            self._fail(entry.id, reason)
            if exc.error.kind == "out_of_memory":
                raise InsufficientMemory(f"Model {entry.id!r} does not fit in memory: {reason}") from None
            raise ModelLoadFailed(f"Model {entry.id!r} failed to load: {reason}") from None
        except (asyncio.CancelledError, RouterError):
            self.states[entry.id] = ModelState.UNLOADED  # shutdown while loading, or no room
            raise
        except Exception as exc:
            self._emit(ManagerEvent("load_failed", entry.id, time.perf_counter() - load_started))
            self._fail(entry.id, redact_paths(f"{exc.__class__.__name__}: {str(exc)[:300]}"))
            raise ModelLoadFailed(f"Model {entry.id!r} failed to load: {self.failures[entry.id]}") from None
        finally:
            self._reserved.pop(entry.id, None)
            self._notify_room()
        self.loads += 1
        wall = time.perf_counter() - load_started
        resident = _Resident(client, info, entry, signature)
        self._resident[entry.id] = resident
        self.states[entry.id] = ModelState.READY
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
        )

    def batch_options(self, entry: ModelEntry) -> BatchOptions:
        """Batch limits of a model: its own settings over the defaults."""
        defaults, view = self.settings.defaults, self.model_settings(entry)
        return BatchOptions(
            max_batch_size=view.max_batch_size,
            prefill_batch_size=defaults.prefill_batch_size,
            prefill_step_size=defaults.prefill_step_size,
            prefix_cache_bytes=view.prefix_cache_bytes,
            prefix_cache_entries=defaults.prefix_cache_entries,
            grammar_cache_entries=defaults.grammar_cache_entries,
        )

    def _fail(self, model_id: str, reason: str) -> None:
        self.states[model_id] = ModelState.FAILED
        self.failures[model_id] = reason
        logger.error("Model %s failed: %s", model_id, reason)

    async def _materialize(self, entry: ModelEntry) -> Path:
        """The MLX folder of a model; GGUF files are imported on first use."""
        if not entry.is_gguf:
            return entry.path
        target = self.settings.model_dir / IMPORT_DIR_NAME / entry.id.replace("/", "__")
        return await self._run_import(entry.path, target)

    def cost_bytes(self, entry: ModelEntry) -> int:
        """What a model takes resident: its weights (as MLX measured them once loaded, else the
        weight files) plus its KV allowance (one context's KV, capped, and its prefix cache)."""
        resident = self._resident.get(entry.id)
        view = self.model_settings(entry)
        weights = resident.load_info.weight_bytes if resident else entry.weight_bytes
        if view.required_memory_bytes is not None:
            weights = view.required_memory_bytes
        return weights + kv_allowance_bytes(entry, self.settings.defaults, view.prefix_cache_bytes)

    def _residents(self, exclude: str) -> list[Resident]:
        """The policy's view: resident models and loads in progress (which count as busy, and as
        pinned when their model is)."""
        return [
            Resident(mid, self.cost_bytes(r.entry), r.last_used, r.in_flight, mid in self.pinned, mid == self.default_model)
            for mid, r in self._resident.items()
        ] + [
            Resident(mid, cost, time.monotonic(), 1, mid in self.pinned)  # a pinned load stays pinned
            for mid, cost in self._reserved.items()
            if mid != exclude
        ]

    async def _make_room(self, entry: ModelEntry) -> None:
        """Unload idle models (least recently used first) until the target fits the memory
        budget and ``cache_size``.

        If only busy models stand in the way, they take turns: the ones to give way stop taking
        new requests (those wait, so each model serves its queued requests as a group instead of
        swapping per request), the target waits for them to finish, at most ``swap_wait`` seconds.
        If the target could not fit even with every unpinned model gone: 507, nothing unloaded.
        Loads queue on the lock in arrival order."""
        async with self._room_lock:
            level = self.monitor.snapshot().level
            if level in ("high", "critical"):
                await self._unload_idle(f"memory pressure is {level}")
            target = self.cost_bytes(entry)
            slots, budget = self.settings.defaults.cache_size, self.budget_bytes
            if not plan_eviction(
                target, [replace(r, in_flight=0) for r in self._residents(entry.id)], budget_bytes=budget, max_resident=slots
            ).fits:
                held = ", ".join(sorted(r.id for r in self._residents(entry.id) if r.pinned)) or "none"
                if target > budget or self._blocked_by(entry, "memory"):
                    raise InsufficientMemory(
                        f"Model {entry.id!r} needs {target / GB:.2f} GB and cannot fit in the memory budget of "
                        f"{budget / GB:.2f} GB next to the pinned models ({held}). Raise defaults.memory_budget_gb "
                        "or unpin a model."
                    )
                raise ServiceUnavailable(
                    f"Cannot load {entry.id!r}: all {slots} model slot(s) are held by pinned models ({held}). "
                    "Raise defaults.cache_size or unpin a model.",
                    code="model_slots_busy",
                    headers={"Retry-After": "5"},
                )
            decision = plan_eviction(target, self._residents(entry.id), budget_bytes=budget, max_resident=slots)
            if not decision.fits:
                turn = plan_eviction(
                    target, [replace(r, in_flight=0) for r in self._residents(entry.id)], budget_bytes=budget, max_resident=slots
                )
                self._draining.update(m for m in turn.evict if m in self._resident)
                try:
                    await self._wait_for(
                        lambda: plan_eviction(target, self._residents(entry.id), budget_bytes=budget, max_resident=slots).fits,
                        f"a turn to load {entry.id!r}",
                    )
                finally:
                    self._draining.difference_update(turn.evict)
                    self._notify_room()
                decision = plan_eviction(target, self._residents(entry.id), budget_bytes=budget, max_resident=slots)
            for model_id in decision.evict:
                await self.unload(model_id, reason=f"making room for {entry.id}")
                self._emit(ManagerEvent("evicted", model_id, reason="room"))
            self._reserved[entry.id] = target

    def _blocked_by(self, entry: ModelEntry, blocker: str) -> bool:
        """Whether the target is refused for ``blocker`` with every unpinned model gone."""
        pinned = [r for r in self._residents(entry.id) if r.pinned]
        decision = plan_eviction(
            self.cost_bytes(entry), pinned, budget_bytes=self.budget_bytes, max_resident=self.settings.defaults.cache_size
        )
        return not decision.fits and decision.blocker == blocker

    async def _unload_idle(self, reason: str) -> None:
        """Unload every idle, unpinned model (under memory pressure)."""
        for model_id, resident in list(self._resident.items()):
            if not resident.in_flight and model_id not in self.pinned:
                await self.unload(model_id, reason=reason)
                self._emit(ManagerEvent("evicted", model_id, reason="pressure"))

    async def unload(self, model_id: str, reason: str = "requested") -> None:
        resident = self._resident.pop(model_id, None)
        if resident is None:
            return
        self.states[model_id] = ModelState.UNLOADING
        logger.info("Unloading %s (%s)", model_id, reason)
        await resident.client.stop()
        self.states[model_id] = ModelState.UNLOADED
        self._notify_room()

    def _on_worker_exit(self, client: Any, reason: str) -> None:
        """A worker died: its requests already got errors; pinned models and the default model
        come back at once."""
        for model_id, resident in list(self._resident.items()):
            if resident.client is client:
                del self._resident[model_id]
                self.worker_restarts += 1
                self._fail(model_id, reason)
                self._emit(ManagerEvent("worker_exit", model_id))
                if self._restarts_at_once(model_id):
                    self._spawn(self._reload_pinned(model_id))

    def _kept(self, model_id: str) -> bool:
        """Pinned models and the default model: loaded at start, again at once when lost (a crash,
        a reload that changed them), and never unloaded for being idle (``keep_alive``). Only the
        pinned ones are also never evicted to make room."""
        return model_id in self.pinned or model_id == self.default_model

    def _restarts_at_once(self, model_id: str) -> bool:
        return self._kept(model_id) and model_id in self.entries and not self._closing

    async def _reload_pinned(self, model_id: str) -> None:
        try:
            await self._ensure_loaded(self.entries[model_id])
        except Exception as exc:  # the state already says FAILED with the reason
            logger.error("Restarting pinned model %s failed: %s", model_id, exc)

    # ---------------------------------------------------------------- admin

    async def load(self, model_id: str) -> None:
        """Load a model now (as a first request would)."""
        async with self.acquire(model_id):
            pass

    async def unload_idle_model(self, model_id: str) -> None:
        """Unload a model on request; refused while it serves requests or is pinned."""
        self.resolve(model_id)
        resident = self._resident.get(model_id)
        if resident is None:
            return
        if model_id in self.pinned:
            raise Conflict(f"Model {model_id!r} is pinned; unpin it first.", param="model")
        if resident.in_flight:
            raise Conflict(f"Model {model_id!r} has {resident.in_flight} request(s) in flight.", param="model")
        await self.unload(model_id, reason="admin request")

    def set_pinned(self, model_id: str, pinned: bool) -> None:
        self.resolve(model_id)
        (self.pinned.add if pinned else self.pinned.discard)(model_id)

    @property
    def resident_count(self) -> int:
        return len(self._resident)

    def model_stats(self) -> list[ModelStats]:
        """Every served model, and resident models a reload removed (until they unload)."""
        stats = []
        for model_id in sorted(set(self.entries) | set(self._resident)):
            resident = self._resident.get(model_id)
            entry = resident.entry if resident is not None else self.entries[model_id]
            sequences = self._demand.get(model_id, 0)
            running = min(getattr(resident.client, "in_flight", 0), self.batch_options(entry).max_batch_size) if resident else 0
            stats.append(
                ModelStats(
                    id=model_id,
                    state=self.states.get(model_id, ModelState.UNLOADED).value,
                    pinned=model_id in self.pinned,
                    resident=resident is not None,
                    in_flight=resident.in_flight if resident else 0,
                    sequences=sequences,
                    queued=max(0, sequences - running),
                    weight_bytes=resident.load_info.weight_bytes if resident else entry.weight_bytes,
                    cost_bytes=self.cost_bytes(entry),
                )
            )
        return stats

    def admin_status(self, stats_list: list[ModelStats] | None = None) -> list[dict[str, Any]]:
        """One row per model (``stats_list``: :meth:`model_stats` already taken)."""
        now = time.monotonic()
        rows = []
        for stats in self.model_stats() if stats_list is None else stats_list:
            resident = self._resident.get(stats.id)
            rows.append(
                {
                    "id": stats.id,
                    "state": stats.state,
                    "failure_reason": self.failures.get(stats.id),
                    "pinned": stats.pinned,
                    "in_flight": stats.in_flight,
                    "sequences": stats.sequences,
                    "queued": stats.queued,
                    "idle_seconds": round(now - resident.last_used, 1) if resident else None,
                    "cost_gb": round(stats.cost_bytes / GB, 3),
                    "weight_gb": round(stats.weight_bytes / GB, 3),
                    "keep_alive": self.keep_alive(stats.id),
                    "pid": getattr(resident.client, "pid", None) if resident else None,
                    "retiring": stats.id in self._retiring,
                    "served": stats.id in self.entries,
                }
            )
        return rows

    # ---------------------------------------------------------------- configuration reload

    async def reload(self, settings: Settings) -> dict[str, list[str]]:
        """Serve the models of a re-read configuration without dropping running requests.

        Added models are served at once. A removed model gets 404 for new requests; if resident,
        it finishes its requests, then unloads. A model whose load-time settings changed (path,
        context_length, chat_template, batch and prefix-cache sizes, warmup_tokens) finishes its
        requests, then unloads; new requests for it wait and load it with the new settings (a
        pinned one is loaded again at once). Other settings apply from the next request. Returns
        the ids added, removed, changed and reloading. Raises :class:`ConfigError` (nothing
        applied) when the default model would no longer be served.
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
        old = self.entries
        loading_signatures = {mid: self.load_signature(old[mid]) for mid in self._loading if mid in old}
        self.settings = settings
        self.aliases = aliases
        self.monitor.defaults = settings.defaults
        self.budget_bytes = memory_budget_bytes(settings.defaults)
        self.refresh_registry(keep_resident=False)
        added = sorted(set(self.entries) - set(old))
        removed = sorted(set(old) - set(self.entries))
        changed = sorted(
            mid for mid in set(old) & set(self.entries) if (old[mid].path, old[mid].config) != (self.entries[mid].path, self.entries[mid].config)
        )
        for mid in removed:
            if mid not in self._resident and mid not in self._loading:
                self.states.pop(mid, None)
                self.failures.pop(mid, None)
        config_pins = {mid for mid, e in old.items() if e.config.pin}
        self.pinned -= config_pins | set(removed)
        self.pinned |= {mid for mid, e in self.entries.items() if self.model_settings(e).pin}
        stale = {
            mid
            for mid in set(self._resident) | set(loading_signatures)
            if mid not in self.entries
            or (self._resident[mid].signature if mid in self._resident else loading_signatures[mid])
            != self.load_signature(self.entries[mid])
        }
        self._retiring |= stale
        for mid in sorted(stale):
            resident = self._resident.get(mid)
            if mid not in self._loading and (resident is None or not resident.in_flight):
                await self._retire(mid)
            else:
                self._spawn(self._retire(mid))
        wanted = [
            mid for mid, e in sorted(self.entries.items())
            if self._preloads(e) and mid not in self._resident and mid not in self._retiring
            and mid not in self._loading and (mid not in old or not (old[mid].config.pin or old[mid].config.preload))
        ]
        for mid in wanted:
            self._spawn(self._load_quietly(mid))
        self._start_expiry()
        logger.info(
            "Configuration reloaded: %d model(s) added, %d removed, %d changed, %d reloading",
            len(added), len(removed), len(changed), len(stale & set(self.entries)),
        )
        return {"added": added, "removed": removed, "changed": changed, "reloading": sorted(stale & set(self.entries))}

    async def _retire(self, model_id: str) -> None:
        """Wait until a stale model has no load in progress and no request in flight, unload
        it, then start loading it again if it is pinned (``_retiring`` holds new requests
        meanwhile)."""
        try:
            while True:
                changed = self._room_changed
                loading = self._loading.get(model_id)
                resident = self._resident.get(model_id)
                if loading is None and (resident is None or not resident.in_flight):
                    break
                if loading is not None:
                    await asyncio.wait({loading})
                else:
                    await changed.wait()
            if resident is not None:
                await self.unload(model_id, reason="configuration reloaded")
        finally:
            self._retiring.discard(model_id)
            if model_id not in self.entries and model_id not in self._resident:
                self.states.pop(model_id, None)
                self.failures.pop(model_id, None)
            self._notify_room()
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

    async def close(self) -> None:
        self._closing = True
        for task in [*self._background, *self._loading.values()]:
            task.cancel()
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.stop(grace=1)
        for model_id in list(self._resident):
            await self.unload(model_id, reason="shutdown")

    # ---------------------------------------------------------------- reporting

    def is_ready(self) -> tuple[bool, str]:
        """Whether the server can serve requests, and why not: it has started, serves some model
        that fits the memory budget, and not every model's last load failed. Which models are
        resident does not matter: any servable model loads on request."""
        if not self.started:
            default = self.default_model
            return False, f"starting: the default model {default} is loading" if default else "starting"
        if not self.entries:
            return False, "no models are available"
        if not any(self.cost_bytes(entry) <= self.budget_bytes for entry in self.entries.values()):
            return False, f"no model fits the memory budget of {self.budget_bytes / GB:.2f} GB (defaults.memory_budget_gb)"
        if all(self.states.get(mid) == ModelState.FAILED for mid in self.entries):
            failures = "; ".join(f"{mid} failed: {self.failures.get(mid, 'unknown reason')}" for mid in sorted(self.entries)[:3])
            return False, f"every model's last load failed ({failures}); the next request for a model tries again"
        return True, "ok"

    def max_tokens_cap(self, entry: ModelEntry) -> int | None:
        """The per-model cap for the current memory-pressure level, if the model has caps (the
        memory is read only then: this runs for every request)."""
        view = self.model_settings(entry)
        return view.max_tokens_cap(self.monitor.snapshot().level) if view.memory_pressure_max_tokens else None

    def model_info(self, entry: ModelEntry, snapshot: MemorySnapshot | None = None) -> dict[str, Any]:
        """The old project's ``memory_requirements`` and ``parameters`` plus state (``snapshot``:
        one memory reading shared by a whole listing)."""
        resident = self._resident.get(entry.id)
        measured = resident.load_info.weight_bytes if resident else entry.weight_bytes
        view = self.model_settings(entry)
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
        state = self.states.get(entry.id, ModelState.UNLOADED)
        return {
            "state": state.value,
            "failure_reason": self.failures.get(entry.id),
            "memory_requirements": {
                "required_gb": required_gb,
                "weight_bytes": measured,
                "measured_from": "mlx_active_memory" if resident else "weight_files",
                "can_load_now": can_load,
                "load_status_reason": reason,
            },
            "parameters": {
                "max_tokens": view.max_tokens,
                "chat_template": view.chat_template,
                "context_length": resident.load_info.context_length if resident else view.context_length,
            },
        }

    def health(self) -> dict[str, Any]:
        snapshot = self.monitor.snapshot()
        loaded = [
            {
                "id": mid,
                "in_flight": r.in_flight,
                "sequences": self._demand.get(mid, 0),
                "pid": getattr(r.client, "pid", None),
                "weight_gb": round(r.load_info.weight_bytes / GB, 3),
                "backend": r.load_info.backend,
                "pinned": mid in self.pinned,
                "default": mid == self.default_model,
            }
            for mid, r in self._resident.items()
        ]
        return {
            "memory": snapshot.to_dict(),
            "pressure": snapshot.level,
            "loaded_models": loaded,
            "current_model": loaded[0]["id"] if loaded else None,
            "models": {mid: state.value for mid, state in sorted(self.states.items())},
            "spare_worker_pid": self._spare.pid if self._spare is not None and self._spare.alive else None,
            "loads": self.loads,
            "worker_restarts": self.worker_restarts,
        }
