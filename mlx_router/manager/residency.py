"""Residency: which models are resident, which are loading, and who may use them now.

:class:`Residency` owns the resident table, each model's state and failure, the reservations of
loads in progress, the models draining (giving way to a waiting load) or retiring (changed or
removed by a reload), and the "room changed" signal that waiting loads and requests sleep on.
It makes room for a load (one eviction plan per decision, from :func:`plan_eviction`), unloads,
and waits. The lifecycle manager (:mod:`mlx_router.manager.manager`) decides *when*; this module
keeps the state consistent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mlx_router.engine.protocol import Engine
from mlx_router.engine.types import LoadInfo, WorkerOptions
from mlx_router.errors import InsufficientMemory, ServiceUnavailable
from mlx_router.manager.policy import Decision, Resident, plan_eviction
from mlx_router.manager.registry import ModelEntry
from mlx_router.manager.state import ManagerEvent, ModelState

__all__ = ["Residency", "ResidentModel", "RoomRules"]

logger = logging.getLogger(__name__)

GB = 1024**3


@dataclass
class ResidentModel:
    """A loaded model and its worker."""

    client: Engine
    load_info: LoadInfo
    entry: ModelEntry
    """The entry it was loaded with (a reload may have replaced or removed the registry's)."""
    signature: WorkerOptions
    """Its worker's options (see :meth:`MLXModelManager.load_signature`)."""
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class RoomRules:
    """The limits a load must fit, read once per load."""

    budget_bytes: int
    max_resident: int | None
    """``defaults.cache_size``; None: no count cap."""
    swap_wait: float
    """Seconds a load may wait for busy models to give way."""


class Residency:
    """The resident table and everything that changes it (see the module docstring).

    ``cost_of`` gives a resident model's cost in bytes; ``is_pinned`` and ``is_kept`` say which
    models are never evicted and which are evicted last (the manager's pins and default model);
    ``emit`` receives the ``evicted`` events."""

    def __init__(
        self,
        *,
        cost_of: Callable[[ResidentModel], int],
        is_pinned: Callable[[str], bool],
        is_kept: Callable[[str], bool],
        emit: Callable[[ManagerEvent], None],
    ) -> None:
        self.resident: dict[str, ResidentModel] = {}
        self.states: dict[str, ModelState] = {}
        self.failures: dict[str, str] = {}
        self.reserved: dict[str, int] = {}
        """Cost of loads in progress, counted against the budget until they finish."""
        self.draining: set[str] = set()
        """Resident models giving way to a waiting load: new requests for them wait their turn."""
        self.retiring: set[str] = set()
        """Resident models whose configuration a reload removed or changed: they finish their
        requests, then unload; new requests for them wait (changed) or get 404 (removed)."""
        self._cost_of = cost_of
        self._is_pinned = is_pinned
        self._is_kept = is_kept
        self._emit = emit
        self._room_lock = asyncio.Lock()
        self._room_changed = asyncio.Event()
        """Set (and replaced) whenever a model goes idle, is unloaded or finishes loading."""

    # ---------------------------------------------------------------- states

    def state(self, model_id: str) -> ModelState:
        return self.states.get(model_id, ModelState.UNLOADED)

    def mark_loading(self, model_id: str) -> None:
        self.states[model_id] = ModelState.LOADING
        self.failures.pop(model_id, None)

    def mark_failed(self, model_id: str, reason: str) -> None:
        self.states[model_id] = ModelState.FAILED
        self.failures[model_id] = reason
        logger.error("Model %s failed: %s", model_id, reason)

    def add(self, model_id: str, resident: ResidentModel) -> None:
        """A load finished: the model is READY."""
        self.resident[model_id] = resident
        self.states[model_id] = ModelState.READY

    def forget(self, model_id: str) -> None:
        """A model no longer served and not resident: drop its state."""
        self.states.pop(model_id, None)
        self.failures.pop(model_id, None)

    def held(self, model_id: str) -> bool:
        """New requests for this model wait: it gives way to a load, or a reload retires it."""
        return model_id in self.draining or model_id in self.retiring

    # ---------------------------------------------------------------- waiting

    def notify(self) -> None:
        """Wake loads and requests waiting for residency to change."""
        self._room_changed.set()
        self._room_changed = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        """The event the next residency change sets (take it before checking the state you
        wait on, so a change in between is not missed)."""
        return self._room_changed

    async def wait_for(self, ready: Callable[[], bool], what: str, swap_wait: float) -> None:
        """Wait until ``ready()``, re-checked at every residency change, at most ``swap_wait``
        seconds (then 503 with Retry-After)."""
        deadline = time.monotonic() + swap_wait
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceUnavailable(
                    f"Waited {swap_wait:g} s (defaults.swap_wait) for {what}; the models it needs stayed busy. "
                    "Retry shortly, or raise defaults.memory_budget_gb (or cache_size, if set).",
                    code="model_slots_busy",
                    retry_after=5,
                )
            try:
                await asyncio.wait_for(self._room_changed.wait(), remaining)
            except TimeoutError:
                pass

    # ---------------------------------------------------------------- making room

    def policy_view(self, exclude: str) -> list[Resident]:
        """The policy's view: resident models and loads in progress (which count as busy, and as
        pinned when their model is)."""
        return [
            Resident(mid, self._cost_of(r), r.last_used, r.in_flight, self._is_pinned(mid), self._is_kept(mid))
            for mid, r in self.resident.items()
        ] + [
            Resident(mid, cost, time.monotonic(), 1, self._is_pinned(mid))  # a pinned load stays pinned
            for mid, cost in self.reserved.items()
            if mid != exclude
        ]

    async def make_room(self, model_id: str, cost: int, rules: RoomRules, pressure: Callable[[], str]) -> None:
        """Unload idle models (least recently used first, kept ones last) until ``cost`` fits
        the budget and the cap, then reserve it.

        Under ``high`` or ``critical`` pressure (``pressure()``, read under the lock) every idle,
        unpinned model goes first. If the target could not fit even with every unpinned model
        gone: 507 (memory) or 503 (slots), nothing unloaded. If only busy models stand in the
        way, they take turns: the ones to give way drain (their new requests wait, so each model
        serves its queued requests as a group instead of swapping per request) and the target
        waits for them, at most ``rules.swap_wait`` seconds. Loads queue on the lock in arrival
        order. Each decision is one :func:`plan_eviction`: whether the target can ever fit,
        what to evict now, and once per residency change while it waits its turn."""

        def plan(residents: list[Resident]) -> Decision:
            return plan_eviction(cost, residents, budget_bytes=rules.budget_bytes, max_resident=rules.max_resident)

        async with self._room_lock:
            level = pressure()
            if level in ("high", "critical"):
                await self.unload_idle(f"memory pressure is {level}")
            residents = self.policy_view(model_id)
            possible = plan([replace(r, in_flight=0) for r in residents])
            if not possible.fits:
                raise self._refusal(model_id, cost, rules, possible, residents)
            decision = plan(residents)
            if not decision.fits:
                decision = await self._take_turn(model_id, possible.evict, plan, rules.swap_wait)
            for evicted in decision.evict:
                await self.unload(evicted, reason=f"making room for {model_id}")
                self._emit(ManagerEvent("evicted", evicted, reason="room"))
            self.reserved[model_id] = cost

    async def _take_turn(
        self, model_id: str, give_way: tuple[str, ...], plan: Callable[[list[Resident]], Decision], swap_wait: float
    ) -> Decision:
        """Drain the models in the way and wait until the target fits; the fitting plan."""
        latest: Decision | None = None

        def fits() -> bool:
            nonlocal latest
            latest = plan(self.policy_view(model_id))
            return latest.fits

        self.draining.update(m for m in give_way if m in self.resident)
        try:
            await self.wait_for(fits, f"a turn to load {model_id!r}", swap_wait)
        finally:
            self.draining.difference_update(give_way)
            self.notify()
        assert latest is not None and latest.fits
        return latest

    def _refusal(
        self, model_id: str, cost: int, rules: RoomRules, possible: Decision, residents: list[Resident]
    ) -> InsufficientMemory | ServiceUnavailable:
        """Why a target can never fit next to the pinned models (``possible`` ignored every
        request in flight, so what remains in its way is pinned)."""
        held = ", ".join(sorted(r.id for r in residents if r.pinned)) or "none"
        if possible.blocker == "memory":
            return InsufficientMemory(
                f"Model {model_id!r} needs {cost / GB:.2f} GB and cannot fit in the memory budget of "
                f"{rules.budget_bytes / GB:.2f} GB next to the pinned models ({held}). Raise defaults.memory_budget_gb "
                "or unpin a model."
            )
        return ServiceUnavailable(
            f"Cannot load {model_id!r}: all {rules.max_resident} model slot(s) are held by pinned models ({held}). "
            "Raise defaults.cache_size or unpin a model.",
            code="model_slots_busy",
            retryable=False,  # only the operator can free a pinned slot
        )

    def release(self, model_id: str) -> None:
        """A load finished (or failed): its reservation ends."""
        self.reserved.pop(model_id, None)
        self.notify()

    # ---------------------------------------------------------------- unloading

    async def unload(self, model_id: str, reason: str = "requested") -> None:
        resident = self.resident.pop(model_id, None)
        if resident is None:
            return
        self.states[model_id] = ModelState.UNLOADING
        logger.info("Unloading %s (%s)", model_id, reason)
        await resident.client.stop()
        self.states[model_id] = ModelState.UNLOADED
        self.notify()

    async def unload_idle(self, reason: str) -> None:
        """Unload every idle, unpinned model (under memory pressure)."""
        for model_id, resident in list(self.resident.items()):
            if not resident.in_flight and not self._is_pinned(model_id):
                await self.unload(model_id, reason=reason)
                self._emit(ManagerEvent("evicted", model_id, reason="pressure"))

    def lost(self, client: Engine) -> list[str]:
        """Remove the models served by a worker that died; their ids."""
        gone = [mid for mid, r in self.resident.items() if r.client is client]
        for model_id in gone:
            del self.resident[model_id]
        return gone
