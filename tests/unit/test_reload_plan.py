"""What a configuration reload changes, as a pure diff."""

from __future__ import annotations

from pathlib import Path

from mlx_router.config.settings import ModelConfig
from mlx_router.engine.types import WorkerOptions
from mlx_router.manager.registry import ModelEntry
from mlx_router.manager.reload_plan import plan_reload


def entry(model_id: str, **config: object) -> ModelEntry:
    return ModelEntry(model_id, Path("/models") / model_id, ModelConfig.model_validate(config), "config", 1)


def options(model_id: str, context: int | None = None) -> WorkerOptions:
    return WorkerOptions(model_id=model_id, model_path=f"/models/{model_id}", context_length=context)


def test_added_removed_changed_stale_and_what_to_load() -> None:
    old = {"a": entry("a"), "b": entry("b", pin=True), "c": entry("c"), "d": entry("d", max_tokens=5)}
    new = {"a": entry("a", context_length=64), "c": entry("c"), "d": entry("d", max_tokens=9), "e": entry("e", preload=True)}
    plan = plan_reload(
        old,
        new,
        running={"a": options("a"), "b": options("b"), "d": options("d")},
        wanted={"a": options("a", 64), "d": options("d")},
        resident={"a", "d"},
        loading={"b"},
        old_pins={"b"},
        new_pins=set(),
        old_preloads={"b"},
        new_preloads={"e"},
    )
    assert (plan.added, plan.removed, plan.changed) == (("e",), ("b",), ("a", "d"))
    assert plan.stale == {"a", "b"}  # a's worker options changed; b is gone (d's max_tokens applies per request)
    assert plan.reloading == ("a",)
    assert plan.forget == ()  # b is still loading: its state stays until it is retired
    assert plan.unpin == {"b"} and plan.pin == frozenset()
    assert plan.preload == ("e",)
    assert plan.models.reloading == ["a"]


def test_an_unchanged_configuration_changes_nothing() -> None:
    entries = {"a": entry("a", preload=True)}
    plan = plan_reload(
        entries, dict(entries), running={"a": options("a")}, wanted={"a": options("a")}, resident={"a"},
        loading=set(), old_pins=set(), new_pins=set(), old_preloads={"a"}, new_preloads={"a"},
    )
    assert (plan.added, plan.removed, plan.changed, plan.stale, plan.preload, plan.forget) == ((), (), (), frozenset(), (), ())
