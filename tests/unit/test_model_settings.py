"""Per-model settings resolved once: the model's own keys over defaults over built-in values."""

from __future__ import annotations

import json
from pathlib import Path

from mlx_router.config.settings import Defaults, ModelConfig
from mlx_router.manager.model_settings import SAMPLING_DEFAULTS, resolve_model_settings
from mlx_router.manager.registry import ModelEntry


def entry(tmp_path: Path, **config: object) -> ModelEntry:
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 8}))
    return ModelEntry("m", tmp_path, ModelConfig.model_validate(config), "config", 1000)


def test_without_own_keys_a_model_gets_the_defaults_and_the_built_in_sampling(tmp_path: Path) -> None:
    defaults = Defaults(max_tokens=111, max_batch_size=7, max_queue=3, keep_alive=9, prefix_cache_bytes=5)
    view = resolve_model_settings(entry(tmp_path), defaults, budget_bytes=1 << 30)
    assert (view.max_tokens, view.max_batch_size, view.max_queue, view.keep_alive) == (111, 7, 3, 9)
    assert view.queue_limit == 10 and view.prefix_cache_bytes == 5
    assert (view.temperature, view.top_p, view.top_k, view.min_p) == (
        SAMPLING_DEFAULTS.temperature, SAMPLING_DEFAULTS.top_p, SAMPLING_DEFAULTS.top_k, SAMPLING_DEFAULTS.min_p
    )
    assert view.chat_template == "auto" and view.context_length is None and view.required_memory_bytes is None
    assert view.max_tokens_cap("high") is None


def test_a_models_own_keys_win_zero_values_included(tmp_path: Path) -> None:
    own = entry(
        tmp_path, max_tokens=5, temp=0.0, top_p=0.5, top_k=4, min_p=0.0, max_queue=0, keep_alive=0,
        prefix_cache_bytes=0, chat_template="chatml", required_memory_gb=1.5,
        memory_pressure_max_tokens={"high": 3},
    )
    view = resolve_model_settings(own, Defaults(keep_alive=60, max_queue=64), budget_bytes=1 << 30)
    assert (view.max_tokens, view.temperature, view.top_p, view.top_k, view.min_p) == (5, 0.0, 0.5, 4, 0.0)
    assert (view.max_queue, view.keep_alive, view.prefix_cache_bytes) == (0, 0, 0)
    assert view.chat_template == "chatml" and view.required_memory_bytes == int(1.5 * 1024**3)
    assert view.max_tokens_cap("high") == 3 and view.max_tokens_cap("normal") is None
