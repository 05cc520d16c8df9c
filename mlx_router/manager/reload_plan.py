"""What a configuration reload does to the models, as a pure diff the manager applies.

Given the registry before and after, the worker options each resident (or loading) model was
started with and those it would be started with now, and which models pin or preload, decide:
which ids were added, removed or changed, which resident models are stale (removed, or their
worker options changed: they finish their requests, then unload), which states to forget,
the pins to drop and add, and which models to load now.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from mlx_router.engine.types import WorkerOptions
from mlx_router.manager.registry import ModelEntry

__all__ = ["ReloadPlan", "ReloadedModels", "plan_reload"]


@dataclass(frozen=True)
class ReloadedModels:
    """The ``models`` part of a reload's answer."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    reloading: list[str]


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    """In both registries with a different path or configuration."""
    stale: frozenset[str]
    """Resident or loading models that are removed or whose worker options changed."""
    reloading: tuple[str, ...]
    """Stale models still served: they load again with the new options."""
    forget: tuple[str, ...]
    """Removed ids that are neither resident nor loading: their states go."""
    unpin: frozenset[str]
    """Pins that came from the old configuration or belonged to removed ids."""
    pin: frozenset[str]
    """Pins of the new configuration."""
    preload: tuple[str, ...]
    """Models newly pinned or preloaded (or added so): to load now unless resident or loading
    once the stale models are retired."""

    @property
    def models(self) -> ReloadedModels:
        return ReloadedModels(list(self.added), list(self.removed), list(self.changed), list(self.reloading))


def plan_reload(
    old: Mapping[str, ModelEntry],
    new: Mapping[str, ModelEntry],
    *,
    running: Mapping[str, WorkerOptions],
    wanted: Mapping[str, WorkerOptions],
    resident: Collection[str],
    loading: Collection[str],
    old_pins: Collection[str],
    new_pins: Collection[str],
    old_preloads: Collection[str],
    new_preloads: Collection[str],
) -> ReloadPlan:
    """The diff (see the module docstring). ``running``: the options each resident or loading
    model was started with; ``wanted``: the options it would be started with now (ids still
    served); pins and preloads are the ids whose configuration pins or preloads them."""
    removed = tuple(sorted(set(old) - set(new)))
    stale = frozenset(mid for mid, options in running.items() if mid not in new or wanted.get(mid) != options)
    return ReloadPlan(
        added=tuple(sorted(set(new) - set(old))),
        removed=removed,
        changed=tuple(
            sorted(mid for mid in set(old) & set(new) if (old[mid].path, old[mid].config) != (new[mid].path, new[mid].config))
        ),
        stale=stale,
        reloading=tuple(sorted(stale & set(new))),
        forget=tuple(mid for mid in removed if mid not in resident and mid not in loading),
        unpin=frozenset(old_pins) | frozenset(removed),
        pin=frozenset(new_pins),
        preload=tuple(sorted(mid for mid in new_preloads if mid not in old or mid not in old_preloads)),
    )
