"""Model discovery: which model ids exist and where their files are.

Ids are the only thing a request can name; a request never supplies a path. Discovery looks
at ``model_directory`` for plain model folders (``name/config.json``), ``org/name`` trees
(LM Studio's layout), Hugging Face cache folders (``models--org--name/snapshots/<hash>/``,
newest complete snapshot) and ``.gguf`` files (imported on first use). Entries from the
``models`` section of config.json win over discovered ones.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from mlx_router.config.settings import Defaults, ModelConfig

__all__ = [
    "CAPABILITIES",
    "IMPORT_DIR_NAME",
    "ModelEntry",
    "directory_signature",
    "discover_models",
    "kv_allowance_bytes",
    "kv_bytes_per_token",
    "prefix_cache_bytes",
    "weight_bytes",
]

logger = logging.getLogger(__name__)

IMPORT_DIR_NAME = ".gguf-imports"
EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct"
"""The bundled default model, imported into the model directory under this name."""

"""Folder under model_directory where GGUF files are imported to MLX folders."""

Source = Literal["config", "discovered", "embedded"]

CAPABILITIES = ("chat", "completions", "embeddings", "vision", "tools")
"""What ``/v1/models`` may list for a model, in this order."""

EMBEDDING_TYPES = frozenset({"bert", "xlm_roberta", "modernbert", "qwen3", "gemma3_text", "lfm2", "llama_bidirec"})
"""Text model types mlx-embeddings loads (``mlx_embeddings.models``)."""
ENCODER_TYPES = frozenset({"bert", "xlm_roberta", "modernbert"})
"""Encoder-only types: embedding models whatever else their files say (they cannot generate)."""
_GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
_KNOWN_DIMENSIONS: dict[str, list[int] | Literal["any"]] = {"qwen3": "any", "gemma3_text": [128, 256, 512, 768]}
"""Matryoshka sizes of the embedding families trained for them: Qwen3-Embedding (any size, from
32 up per its card) and EmbeddingGemma (768, 512, 256, 128)."""


@dataclass
class ModelEntry:
    """A servable model id and what is known about it before loading."""

    id: str
    path: Path
    config: ModelConfig
    source: Source
    weight_bytes: int
    """Bytes of the weight files on disk (safetensors, or the GGUF file)."""

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix == ".gguf"

    # The two inferences read the model's files once per entry (a registry refresh or a reload
    # builds new entries): they are asked on requests and on every memory-cost computation.
    @cached_property
    def supports_vision(self) -> bool:
        """``supports_vision`` from config.json, else inferred: the model's config has a vision tower."""
        if self.config.supports_vision is not None:
            return self.config.supports_vision
        return "vision_config" in _model_config(self.path)

    @cached_property
    def supports_tools(self) -> bool:
        """``supports_tools`` from config.json, else inferred: the chat template renders tools.
        The embedded SmolLM2 does by default: its template cannot, so the server describes the
        tools itself (``mlx_router.text.tools.prompt``); forced calls and JSON answers work."""
        if self.config.supports_tools is not None:
            return self.config.supports_tools
        if _is_embedded(self.id, self.path):
            return True
        if self.config.chat_template not in (None, "auto"):  # a named template replaces the model's
            from mlx_router.text.templates import named_template

            return "tools" in named_template(self.config.chat_template)
        folder = self.path if self.path.is_dir() else self.path.parent
        template = _json_field(folder / "tokenizer_config.json", "chat_template")
        if not template and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(errors="replace")
        if not template:  # vision checkpoints keep their processor's template here
            template = _json_field(folder / "chat_template.json", "chat_template")
        return "tools" in str(template)


    @cached_property
    def is_embedding_model(self) -> bool:
        """``embedding_model`` from config.json, else inferred from the model's files: a type
        mlx-embeddings loads that is encoder-only, or ships sentence-transformers files, or
        whose ``architectures`` name no generative class (``Gemma3TextModel``, not
        ``Gemma3ForCausalLM``). Qwen3-Embedding declares ``Qwen3ForCausalLM``: its
        sentence-transformers files tell it apart from a Qwen3 chat model."""
        if self.config.embedding_model is not None:
            return self.config.embedding_model
        if self.is_gguf:
            return False
        config = _model_config(self.path)
        model_type = str(config.get("model_type", "")).replace("-", "_")
        if model_type not in EMBEDDING_TYPES:
            return False
        if model_type in ENCODER_TYPES or _has_st_files(self.path):
            return True
        architectures = config.get("architectures")
        if not isinstance(architectures, list) or not architectures:
            return False
        return not any(str(name).endswith(_GENERATIVE_SUFFIXES) for name in architectures)

    @property
    def supports_embeddings(self) -> bool:
        """``supports_embeddings`` from config.json, else: embedding and text models do (pooled
        hidden states); vision models and models served by a group of ranks do not."""
        if self.config.supports_embeddings is not None:
            return self.config.supports_embeddings
        if self.config.distributed is not None:
            return False
        return self.is_embedding_model or not self.supports_vision

    @property
    def embedding_dimensions(self) -> list[int] | Literal["any"] | None:
        """Shorter sizes this model's embeddings may be cut to (None: the full size only)."""
        if self.config.embedding_dimensions is not None:
            return self.config.embedding_dimensions
        if not self.is_embedding_model:
            return None
        return _KNOWN_DIMENSIONS.get(str(_model_config(self.path).get("model_type", "")).replace("-", "_"))

    @property
    def capabilities(self) -> list[str]:
        """What the model serves, as ``/v1/models`` lists it."""
        if self.is_embedding_model:
            return ["embeddings"] if self.supports_embeddings else []
        found = {"chat", "completions"}
        if self.supports_embeddings:
            found.add("embeddings")
        if self.supports_vision:
            found.add("vision")
        if self.supports_tools:
            found.add("tools")
        return [name for name in CAPABILITIES if name in found]


def _has_st_files(path: Path) -> bool:
    """A sentence-transformers checkpoint (its module list or its pooling settings)."""
    return any((path / name).is_file() for name in ("modules.json", "config_sentence_transformers.json"))


def _json_field(path: Path, key: str) -> object:
    """``key`` of the JSON object in ``path``; empty when the file is missing or unreadable."""
    try:
        return json.loads(path.read_text()).get(key) or ""
    except (OSError, ValueError, AttributeError):
        return ""


def _is_embedded(model_id: str, path: Path) -> bool:
    """The bundled default model, as the manager imports it (configured or discovered)."""
    return model_id == EMBEDDED_MODEL_ID and (path / "gguf_import.json").is_file()


def weight_bytes(path: Path) -> int:
    """Size of a model's weights as stored: the safetensors files mlx-lm loads (``model*``, which
    leaves out a repo's second copy such as Mistral's ``consolidated.safetensors``; any
    ``*.safetensors`` when none is named so), or the GGUF file."""
    if path.is_file():
        return path.stat().st_size
    files = [p for p in path.glob("model*.safetensors") if p.is_file()] or [
        p for p in path.glob("*.safetensors") if p.is_file()
    ]
    return sum(p.stat().st_size for p in files)


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _hf_snapshot(repo_dir: Path) -> Path | None:
    """The newest snapshot of an HF cache repo folder that holds a complete model."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = [p for p in snapshots.iterdir() if p.is_dir() and _is_complete(p)]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def _is_model_config_folder(folder: Path) -> bool:
    """A folder that declares a model. Listed even when its weights are missing or broken: the
    first load then marks it FAILED with the reason, instead of it silently not existing."""
    return (folder / "config.json").is_file()


def _is_complete(folder: Path) -> bool:
    """A folder whose sharded-weights index (if any) names only files that exist."""
    if not _is_model_folder(folder):
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return False
        return all((folder / name).is_file() for name in names)
    return True


def discover_models(model_dir: Path) -> dict[str, Path]:
    """Map model id → folder (or .gguf file) for everything found under ``model_dir``."""
    found: dict[str, Path] = {}
    if not model_dir.is_dir():
        return found
    for child in sorted(model_dir.iterdir()):
        name = child.name
        if name.startswith(".") or name == IMPORT_DIR_NAME:
            continue
        if child.is_file() and child.suffix == ".gguf":
            found.setdefault(child.stem, child)
        elif child.is_dir() and name.startswith("models--"):
            parts = name.split("--")[1:]
            snapshot = _hf_snapshot(child)
            if snapshot is not None and parts:
                found.setdefault("/".join(parts), snapshot)
        elif child.is_dir() and _is_model_config_folder(child):
            found.setdefault(name, child)
        elif child.is_dir():
            for sub in sorted(child.iterdir()):
                if sub.is_dir() and _is_model_config_folder(sub):
                    found.setdefault(f"{name}/{sub.name}", sub)
                elif sub.is_file() and sub.suffix == ".gguf":
                    found.setdefault(f"{name}/{sub.stem}", sub)
    return found


def directory_signature(model_dir: Path) -> tuple[tuple[str, int, bool], ...]:
    """The names and modification times of the model directory's direct children, and whether
    each holds a ``config.json``: two ``stat`` calls per entry, so a listing can tell cheaply that
    a folder was added, removed or filled in (a change deeper down, such as a Hugging Face
    snapshot completing, waits for the periodic rescan)."""
    try:
        with os.scandir(model_dir) as children:
            return tuple(
                sorted(
                    (child.name, child.stat().st_mtime_ns, os.path.isfile(os.path.join(child.path, "config.json")))
                    for child in children
                    if not child.name.startswith(".")
                )
            )
    except OSError:
        return ()


def build_registry(models: dict[str, ModelConfig], model_dir: Path) -> dict[str, ModelEntry]:
    """Entries for configured models (which must exist) plus discovered ones."""
    entries: dict[str, ModelEntry] = {}
    discovered = discover_models(model_dir)
    for model_id, config in models.items():
        path = _configured_path(model_id, config, model_dir, discovered)
        if path is None:
            logger.warning(
                "Configured model %r was not found under the model directory; it is not served. "
                "Set models.%s.path or place the model folder there.",
                model_id,
                model_id,
            )
            continue
        entries[model_id] = ModelEntry(model_id, path, config, "config", weight_bytes(path))
    # A configured id that found its folder by name (e.g. "org/X" → folder X) stands for that
    # folder; one with an explicit `path` is an alias with its own settings, beside it.
    claimed = {e.path for e in entries.values() if not e.config.path}
    for model_id, path in discovered.items():
        if model_id not in entries and path not in claimed:
            if _is_embedded(model_id, path):
                entries[model_id] = ModelEntry(model_id, path, ModelConfig(), "embedded", weight_bytes(path))
                continue
            entries[model_id] = ModelEntry(model_id, path, ModelConfig(), "discovered", weight_bytes(path))
    return entries


def _configured_path(
    model_id: str, config: ModelConfig, model_dir: Path, discovered: dict[str, Path]
) -> Path | None:
    if config.path:
        path = Path(config.path).expanduser()
        path = path if path.is_absolute() else model_dir / path
        return path if (path.is_file() and path.suffix == ".gguf") or _is_complete(path) else None
    if model_id in discovered:
        return discovered[model_id]
    # The old project's ids are Hub names ("mlx-community/X"); accept a folder named like the last part.
    tail = model_id.rsplit("/", 1)[-1]
    return discovered.get(tail)


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _model_config(path: Path) -> dict[str, object]:
    folder = path if path.is_dir() else path.parent
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    text = data.get("text_config")
    return {**data, **text} if isinstance(text, dict) else data


def _int(value: object) -> int:
    """An integer from a config.json value; TypeError or ValueError when it is none."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"not a number: {value!r}")
    return int(value)


def kv_bytes_per_token(path: Path) -> int:
    """2 (K and V) × layers × KV heads × head size × bytes per value, from the model's config.

    Quantized weights still keep their KV cache in 16-bit; unknown shapes give 0."""
    config = _model_config(path)
    try:
        layers = _int(config["num_hidden_layers"])
        heads = _int(config.get("num_attention_heads") or 0)
        kv_heads = _int(config.get("num_key_value_heads") or heads)
        head_dim = _int(config.get("head_dim") or _int(config["hidden_size"]) // max(heads, 1))
    except (KeyError, TypeError, ValueError):
        return 0
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float16")
    return 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 2)


def _allowance_tokens(entry: ModelEntry, defaults: Defaults) -> int:
    """``defaults.kv_allowance_tokens``, bounded by the model's context (its config.json's
    ``max_position_embeddings`` unless configured; 4096 when neither says)."""
    context = entry.config.context_length
    if context is None:
        try:
            context = _int(_model_config(entry.path).get("max_position_embeddings") or 4096)
        except (TypeError, ValueError):
            context = 4096
    return min(context, defaults.kv_allowance_tokens)


PREFIX_CACHE_BUDGET_SHARE = 16
"""By default a model's prefix cache takes at most 1/16 of the memory budget."""


def prefix_cache_bytes(entry: ModelEntry, defaults: Defaults, budget_bytes: int) -> int:
    """Bytes of KV a model keeps for reuse across requests: ``models.<id>.prefix_cache_bytes``,
    else ``defaults.prefix_cache_bytes``, else (null, the default) the KV of
    ``kv_allowance_tokens`` tokens of this model (bounded by its context) and at most 1/16 of the
    memory budget, so the default follows the model and the machine (a fixed 1 GiB was a
    quarter of a small machine's budget, and a tiny model's worker grew by it). Vision models
    keep none: a prompt's KV depends on its images; nor do embedding models, which keep no KV."""
    if entry.supports_vision or entry.is_embedding_model:
        return 0
    if entry.config.prefix_cache_bytes is not None:
        return entry.config.prefix_cache_bytes
    if defaults.prefix_cache_bytes is not None:
        return defaults.prefix_cache_bytes
    return min(kv_bytes_per_token(entry.path) * _allowance_tokens(entry, defaults), budget_bytes // PREFIX_CACHE_BUDGET_SHARE)


def kv_allowance_bytes(entry: ModelEntry, defaults: Defaults, prefix_cache_bytes: int) -> int:
    """Memory a model may need beyond its weights: the KV of ``defaults.kv_allowance_tokens``
    tokens (bounded by its context) plus its prefix cache."""
    return kv_bytes_per_token(entry.path) * _allowance_tokens(entry, defaults) + prefix_cache_bytes
