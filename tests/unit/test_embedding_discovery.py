"""Telling embedding models from language models by their files (``ModelEntry``), and what
``/v1/models`` lists for each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlx_router.config.settings import ModelConfig
from mlx_router.manager.registry import ModelEntry


def entry(tmp_path: Path, config: dict[str, Any], *, st: bool = False, **settings: Any) -> ModelEntry:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if st:
        (folder / "modules.json").write_text("[]")
    return ModelEntry("m", folder, ModelConfig(**settings), "discovered", 0)


@pytest.mark.parametrize(
    ("config", "st", "embedding", "dimensions"),
    [
        ({"model_type": "bert", "architectures": ["BertModel"]}, False, True, None),
        ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, False, True, None),  # encoder-only
        ({"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"]}, False, True, None),
        ({"model_type": "modernbert", "architectures": ["ModernBertModel"]}, False, True, None),
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, False, False, None),  # a chat model
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, True, True, "any"),  # Qwen3-Embedding
        ({"model_type": "gemma3_text", "architectures": ["Gemma3TextModel"]}, False, True, [128, 256, 512, 768]),
        ({"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}, False, False, None),
        ({"model_type": "qwen3"}, False, False, None),  # no architectures: not guessed
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, True, False, None),  # mlx-lm pools it
        ({"model_type": "chatglm", "architectures": ["ChatGLMModel"]}, False, False, None),
        ({"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}, False, False, None),
    ],
)
def test_embedding_models_are_told_from_their_files(
    tmp_path: Path, config: dict[str, Any], st: bool, embedding: bool, dimensions: object
) -> None:
    found = entry(tmp_path, config, st=st)
    assert found.is_embedding_model is embedding
    assert found.embedding_dimensions == dimensions


def test_config_keys_win(tmp_path: Path) -> None:
    bert = {"model_type": "bert", "architectures": ["BertModel"]}
    assert entry(tmp_path, bert, embedding_model=False, embedding_dimensions=[64]).is_embedding_model is False
    assert entry(tmp_path / "b", bert, embedding_dimensions=[64]).embedding_dimensions == [64]


@pytest.mark.parametrize(
    ("config", "settings", "capabilities"),
    [
        ({"model_type": "bert", "architectures": ["BertModel"]}, {}, ["embeddings"]),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, {}, ["chat", "completions", "embeddings"]),
        ({"model_type": "llama"}, {"supports_embeddings": False, "supports_tools": True}, ["chat", "completions", "tools"]),
        ({"model_type": "qwen2_vl", "vision_config": {}}, {"supports_tools": False}, ["chat", "completions", "vision"]),
    ],
)
def test_capabilities(tmp_path: Path, config: dict[str, Any], settings: dict[str, Any], capabilities: list[str]) -> None:
    assert entry(tmp_path, config, **settings).capabilities == capabilities
