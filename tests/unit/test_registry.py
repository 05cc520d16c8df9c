"""Discovery: which folders become model ids, and configured entries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mlx_router.config.settings import ModelConfig
from mlx_router.manager.registry import IMPORT_DIR_NAME, build_registry, discover_models


def model_folder(path: Path, weights: int = 10, shards: list[str] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    for name in shards or ["model.safetensors"]:
        (path / name).write_bytes(b"x" * weights)
    return path


def test_layouts(tmp_path: Path) -> None:
    model_folder(tmp_path / "plain")
    model_folder(tmp_path / "org" / "name")
    old = model_folder(tmp_path / "models--acme--chat" / "snapshots" / "aaa")
    new = model_folder(tmp_path / "models--acme--chat" / "snapshots" / "bbb")
    os.utime(old, (time.time() - 100, time.time() - 100))
    (tmp_path / "local.gguf").write_bytes(b"GGUF")
    (tmp_path / "empty").mkdir()
    model_folder(tmp_path / IMPORT_DIR_NAME / "imported")
    model_folder(tmp_path / ".hidden")
    found = discover_models(tmp_path)
    assert found == {
        "plain": tmp_path / "plain",
        "org/name": tmp_path / "org" / "name",
        "acme/chat": new,
        "local": tmp_path / "local.gguf",
    }


def test_incomplete_sharded_snapshot_is_skipped(tmp_path: Path) -> None:
    complete = model_folder(tmp_path / "models--a--b" / "snapshots" / "old")
    broken = model_folder(tmp_path / "models--a--b" / "snapshots" / "new", shards=["model-00001.safetensors"])
    index = {"weight_map": {"x": "model-00001.safetensors", "y": "model-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    os.utime(complete, (time.time() - 100, time.time() - 100))
    assert discover_models(tmp_path) == {"a/b": complete}


def test_registry_measures_weights_and_honours_config(tmp_path: Path) -> None:
    model_folder(tmp_path / "Llama-3.2-3B-Instruct-4bit", weights=1234)
    model_folder(tmp_path / "other", weights=7)
    models = {
        "mlx-community/Llama-3.2-3B-Instruct-4bit": ModelConfig(max_tokens=99),
        "alias": ModelConfig(path="other", context_length=64),
        "missing": ModelConfig(),
    }
    entries = build_registry(models, tmp_path)
    assert set(entries) == {"mlx-community/Llama-3.2-3B-Instruct-4bit", "alias", "other"}
    hub = entries["mlx-community/Llama-3.2-3B-Instruct-4bit"]
    assert hub.weight_bytes == 1234 and hub.config.max_tokens == 99 and hub.source == "config"
    assert entries["alias"].path == tmp_path / "other" and entries["alias"].config.context_length == 64
    assert entries["other"].source == "discovered"


def test_missing_directory_is_empty(tmp_path: Path) -> None:
    assert discover_models(tmp_path / "nope") == {}


def test_a_folder_without_weights_is_listed_so_its_failure_can_be_reported(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    entries = build_registry({}, tmp_path)
    assert entries["broken"].weight_bytes == 0


def test_vision_and_tools_are_inferred_and_config_overrides(tmp_path: Path) -> None:
    vision = model_folder(tmp_path / "vlm")
    (vision / "config.json").write_text('{"vision_config": {"depth": 2}}')
    (vision / "tokenizer_config.json").write_text('{"chat_template": "{% if tools %}{{ tools }}{% endif %}"}')
    model_folder(tmp_path / "plain")
    entries = build_registry({"overridden": ModelConfig(path="vlm", supports_vision=False, supports_tools=False)}, tmp_path)
    assert entries["vlm"].supports_vision and entries["vlm"].supports_tools
    assert not entries["plain"].supports_vision and not entries["plain"].supports_tools
    assert not entries["overridden"].supports_vision and not entries["overridden"].supports_tools


def test_tools_are_inferred_from_a_processor_template(tmp_path: Path) -> None:
    """Vision checkpoints often keep the chat template in chat_template.json, not the tokenizer's config."""
    folder = model_folder(tmp_path / "vlm")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "{% for tool in tools %}{{ tool }}{% endfor %}"}))
    model_folder(tmp_path / "broken")
    (tmp_path / "broken" / "chat_template.json").write_text("[not an object")
    entries = build_registry({}, tmp_path)
    assert entries["vlm"].supports_tools
    assert not entries["broken"].supports_tools


def test_embedded_model_supports_tools_configured_or_not(tmp_path: Path) -> None:
    """The bundled SmolLM2 (as the manager imports it) takes tools by default, with or without a
    config.json entry of its own; an entry can still turn them off."""
    from mlx_router.manager.registry import EMBEDDED_MODEL_ID

    folder = tmp_path / EMBEDDED_MODEL_ID
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    (folder / "gguf_import.json").write_text("{}")
    discovered = build_registry({}, tmp_path)[EMBEDDED_MODEL_ID]
    assert (discovered.source, discovered.supports_tools) == ("embedded", True)
    configured = build_registry({EMBEDDED_MODEL_ID: ModelConfig(max_tokens=512)}, tmp_path)[EMBEDDED_MODEL_ID]
    assert configured.supports_tools is True
    refused = build_registry({EMBEDDED_MODEL_ID: ModelConfig(supports_tools=False)}, tmp_path)[EMBEDDED_MODEL_ID]
    assert refused.supports_tools is False
    (folder / "gguf_import.json").unlink()  # a folder of that name that is not the import
    assert build_registry({}, tmp_path)[EMBEDDED_MODEL_ID].supports_tools is False


def test_a_named_chat_template_decides_tool_support(tmp_path: Path) -> None:
    """The template the worker will use is the one that counts: a configured named template
    that renders tools (qwen, llama3, gpt-oss) makes the model take tools; chatml does not."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    models = {
        "with-qwen": ModelConfig(path=str(folder), chat_template="qwen"),
        "with-chatml": ModelConfig(path=str(folder), chat_template="chatml"),
    }
    entries = build_registry(models, tmp_path)
    assert entries["with-qwen"].supports_tools is True
    assert entries["with-chatml"].supports_tools is False
    assert entries["m"].supports_tools is False


def test_weight_bytes_count_the_files_mlx_lm_loads(tmp_path: Path) -> None:
    """Mistral repos ship consolidated.safetensors beside model-*.safetensors: one copy counts."""
    from mlx_router.manager.registry import weight_bytes

    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 50)
    (tmp_path / "consolidated.safetensors").write_bytes(b"x" * 150)
    assert weight_bytes(tmp_path) == 150
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.safetensors").write_bytes(b"x" * 70)
    assert weight_bytes(other) == 70


def test_vision_models_are_not_charged_for_a_prefix_cache(tmp_path: Path) -> None:
    """Vision workers keep no prefix cache, so their memory cost must not include one."""
    from mlx_router.config.settings import Settings
    from mlx_router.manager.manager import MLXModelManager

    for name, config in (("text", {}), ("vision", {"vision_config": {"depth": 2}})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 8, **config}))
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
    settings = Settings.model_validate({"defaults": {"model_directory": str(tmp_path), "embedded_model": False, "prefix_cache_bytes": 1 << 20}})
    manager = MLXModelManager(settings)
    manager.refresh_registry()
    text, vision = manager.entries["text"], manager.entries["vision"]
    assert manager.batch_options(vision).prefix_cache_bytes == 0
    assert manager.cost_bytes(text) - manager.cost_bytes(vision) == 1 << 20


@pytest.mark.parametrize(
    ("budget_gb", "configured", "expected"),
    [
        # KV per token: 2 x 2 layers x 2 heads x 8 x 2 bytes = 128; 4096 context tokens = 512 KiB.
        (64, {}, 128 * 4096),
        (0.004, {}, int(0.004 * 1024**3) // 16),  # a small budget bounds it
        (64, {"defaults": {"prefix_cache_bytes": 1000}}, 1000),
        (64, {"defaults": {"prefix_cache_bytes": 1000}, "models": {"text": {"prefix_cache_bytes": 0}}}, 0),
    ],
)
def test_prefix_cache_size_follows_the_model_and_the_budget(
    tmp_path: Path, budget_gb: float, configured: dict[str, Any], expected: int
) -> None:
    from mlx_router.config.settings import Settings
    from mlx_router.manager.manager import MLXModelManager

    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 4096}))
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    defaults = {"model_directory": str(tmp_path), "embedded_model": False, "memory_budget_gb": budget_gb, **configured.get("defaults", {})}
    settings = Settings.model_validate({"defaults": defaults, "models": configured.get("models", {})})
    manager = MLXModelManager(settings)
    manager.refresh_registry()
    assert manager.batch_options(manager.entries["text"]).prefix_cache_bytes == expected
