"""The eviction decision, as a pure function of plain values.

Given the model to load (its cost), the resident models (cost, last use, requests in flight,
pinned, kept), the memory budget and the most models that may be resident (if capped), decide
which models to unload: least recently used first, kept models (the default model) after every
other idle one, never one with requests in flight, never a pinned one. If the target cannot fit
even after every evictable model is gone, nothing is evicted and the answer says why (the
manager then answers 507 or 503).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Decision", "Resident", "plan_eviction"]


@dataclass(frozen=True)
class Resident:
    """A loaded model as the policy sees it."""

    id: str
    cost_bytes: int
    last_used: float
    in_flight: int = 0
    pinned: bool = False
    kept: bool = False
    """Evicted only after every other idle model (``defaults.model``): it stays while room allows,
    but never blocks a load that could otherwise be served, as a pin would."""

    @property
    def evictable(self) -> bool:
        return self.in_flight == 0 and not self.pinned


@dataclass(frozen=True)
class Decision:
    """Which models to unload, in order, or why the target cannot be loaded now."""

    evict: tuple[str, ...]
    fits: bool
    blocker: Literal["memory", "slots"] | None = None
    """What stands in the way when it does not fit: the memory budget or the resident-model cap."""


def plan_eviction(
    target_cost: int,
    resident: Sequence[Resident],
    *,
    budget_bytes: int,
    max_resident: int | None = None,
) -> Decision:
    """Least-recently-used eviction of idle, unpinned models until the target fits (kept
    models last).

    The target fits when, after the evictions, one more model keeps the count within
    ``max_resident`` (None: no cap, the budget alone decides) and the summed costs within
    ``budget_bytes``.
    """
    cap = len(resident) + 1 if max_resident is None else max_resident
    if target_cost > budget_bytes:
        return Decision((), False, "memory")
    used = sum(r.cost_bytes for r in resident)
    count = len(resident)
    evict: list[str] = []
    for model in sorted((r for r in resident if r.evictable), key=lambda r: (r.kept, r.last_used)):
        if count + 1 <= cap and used + target_cost <= budget_bytes:
            break
        evict.append(model.id)
        used -= model.cost_bytes
        count -= 1
    if count + 1 > cap:
        return Decision((), False, "slots")
    if used + target_cost > budget_bytes:
        return Decision((), False, "memory")
    return Decision(tuple(evict), True)
