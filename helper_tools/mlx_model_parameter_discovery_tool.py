#!/usr/bin/env python3
"""Read a model folder and print its ``models`` entry for mlx-router's config.json.

Usage:
    python helper_tools/mlx_model_parameter_discovery_tool.py MODEL          # a folder, or an id in the model dir
    python helper_tools/mlx_model_parameter_discovery_tool.py MODEL --json   # the entry only
    python helper_tools/mlx_model_parameter_discovery_tool.py MODEL --benchmark [--prompt-tokens 128 --gen-tokens 32]

Why: the old project guessed a model's memory from its name and asked people to write the rest
by hand. Everything here is read from the files: weight bytes from the safetensors headers,
context length from config.json, chat template from tokenizer_config.json /
chat_template.jinja / chat_template.json, vision and tool support the way the server infers
them (mlx_router/manager/registry.py), reasoning the way it detects it
(mlx_router/text/reasoning.py). The entry is validated with the server's own ``ModelConfig``.

``required_memory_gb`` is the weights (as the server counts a model's weights; ``--benchmark``
measures MLX's memory after loading and takes the larger). The server adds each resident model's
KV allowance on top of it; the summary shows that figure and the total.
Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # runnable as `python helper_tools/mlx_model_parameter_discovery_tool.py`
    sys.path.insert(0, str(_REPO_ROOT))

from pydantic import ValidationError

from helper_tools._common import (
    EXIT_OK,
    OneLineParser,
    ToolError,
    common_options,
    folder_problems,
    human_size,
    run_tool,
    settings_of,
)
from mlx_router.config.settings import ModelConfig, Settings
from mlx_router.manager.memory import memory_budget_bytes
from mlx_router.manager.registry import (
    ModelEntry,
    discover_models,
    kv_allowance_bytes,
    kv_bytes_per_token,
    prefix_cache_bytes,
)
from mlx_router.text.reasoning import detect_reasoning_format

logger = logging.getLogger(__name__)

__all__ = [
    "Findings",
    "build_parser",
    "chat_template_of",
    "detect_family",
    "inspect_model",
    "main",
    "run_benchmark",
    "safetensors_tensor_bytes",
]

GB = 1024**3
"""The server's GB (mlx_router/manager/manager.py)."""
MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors' own limit on the JSON header."""
CONTEXT_KEYS = ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length")
"""config.json keys that hold the context window, in the order the engine reads them."""
SAMPLING_KEYS = {"temperature": "temp", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p"}
"""generation_config.json keys → ModelConfig keys (used only when it asks to sample)."""

# (family, markers): the first family whose marker occurs in the chat template (or, without a
# template, in the special tokens) wins. Order matters: Phi-4 is ChatML with a separator.
_FAMILY_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gpt-oss", ("<|channel|>",)),
    ("llama3", ("<|start_header_id|>",)),
    ("deepseek", ("<｜User｜>", "<｜Assistant｜>")),
    ("phi4", ("<|im_sep|>",)),
    ("chatml", ("<|im_start|>",)),
)


@dataclass
class Findings:
    """What was read from a model folder, and the entry made from it."""

    model_id: str
    folder: Path
    weight_bytes: int
    kv_bytes_per_token: int
    kv_allowance_bytes: int
    context_length: int | None
    template_source: str | None
    family: str | None
    reasoning_format: str | None
    entry: dict[str, Any]
    benchmark: dict[str, Any] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; kept separate so tests and docs can render it."""
    parser = OneLineParser(
        prog="mlx_model_parameter_discovery_tool.py",
        description="Print a config.json `models` entry for an MLX model folder, measured from its files.",
        parents=[common_options()],
    )
    parser.add_argument("model", help="a model folder, or a model id found in the model directory")
    parser.add_argument("--id", dest="model_id", help="the id to print the entry under (default: the id the "
                        "server discovers it as, else the folder name)")
    parser.add_argument("--json", action="store_true", help="print only the entry, as JSON")
    parser.add_argument("--benchmark", action="store_true",
                        help="load the model with mlx-lm and measure prompt and decode tokens/s here")
    parser.add_argument("--prompt-tokens", type=_positive, default=128, help="benchmark prompt length (default 128)")
    parser.add_argument("--gen-tokens", type=_positive, default=32, help="benchmark tokens to generate (default 32)")
    parser.add_argument("--trials", type=_positive, default=2, help="timed benchmark runs after a warm-up (default 2)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value} is out of range (1 to 1000000)")
    return value


# ---------------------------------------------------------------------------------------------- reading files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ToolError(f"{path.name} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ToolError(f"{path.name} does not hold a JSON object")
    return data


def safetensors_tensor_bytes(path: Path) -> int:
    """Bytes of the tensors a safetensors file holds, from its header (the data is not read).

    The format: 8 bytes little-endian header length, a JSON header mapping each tensor to its
    dtype, shape and ``data_offsets`` in the data section that follows."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        head = stream.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise ToolError(f"{path.name} is not a safetensors file (bad header length)")
        try:
            header = json.loads(stream.read(length))
            spans = [info["data_offsets"] for name, info in header.items() if name != "__metadata__"]
            total = sum(int(end) - int(start) for start, end in spans)
            end = max((int(end) for _, end in spans), default=0)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ToolError(f"{path.name} has a broken safetensors header ({type(exc).__name__})") from None
    if 8 + length + end > size:
        raise ToolError(f"{path.name} is truncated: its header names {end} data bytes, the file has "
                        f"{size - 8 - length}")
    return total


def _weight_files(folder: Path) -> list[Path]:
    index = _read_json(folder / "model.safetensors.index.json")
    if index:
        names = sorted(set((index.get("weight_map") or {}).values()))
        return [folder / name for name in names]
    return sorted(folder.glob("*.safetensors"))


def chat_template_of(folder: Path) -> tuple[str | None, str | None]:
    """The model's own chat template and the file it came from, as transformers looks for them:
    ``chat_template.jinja``, then tokenizer_config.json's ``chat_template`` (a string, or a list
    of named templates: all are returned, joined), then ``chat_template.json``."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace"), jinja.name
    for name in ("tokenizer_config.json", "chat_template.json"):
        template = _read_json(folder / name).get("chat_template")
        if isinstance(template, list):
            template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
        if isinstance(template, str) and template.strip():
            return template, name
    return None, None


def _special_tokens(folder: Path) -> str:
    """The special tokens of a tokenizer, joined: markers for a folder without a template."""
    tokens = [str(t.get("content", "")) for t in (_read_json(folder / "tokenizer_config.json")
                                                    .get("added_tokens_decoder") or {}).values()
              if isinstance(t, dict)]
    try:
        tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        tokens += [str(t.get("content", "")) for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict)]
    except (OSError, ValueError, AttributeError):
        pass
    return " ".join(tokens)


def detect_family(text: str, model_type: str = "") -> str | None:
    """The server's named template whose family ``text`` (a chat template, or special tokens)
    belongs to; None when none is recognisable. ChatML with Hermes tool calls (``<tool_call>``)
    or a ``qwen*`` model type is Qwen's format."""
    for family, markers in _FAMILY_MARKERS:
        if any(marker in text for marker in markers):
            if family == "chatml" and (model_type.startswith("qwen") or "<tool_call>" in text):
                return "qwen"
            return family
    return None


def _context_length(config: dict[str, Any]) -> int | None:
    sections = [config, config.get("text_config") if isinstance(config.get("text_config"), dict) else {}]
    for key in CONTEXT_KEYS:
        for section in sections:
            value = section.get(key)
            if isinstance(value, int) and value >= 16:
                return value
    return None


def _sampling(folder: Path) -> dict[str, Any]:
    """The model's recommended sampling (generation_config.json), when it asks to sample; each
    value kept only if the server accepts it."""
    config = _read_json(folder / "generation_config.json")
    if config.get("do_sample") is not True:
        return {}
    out = {}
    for source, key in SAMPLING_KEYS.items():
        if source in config:
            try:
                ModelConfig.model_validate({key: config[source]})
            except ValidationError:
                logger.info("generation_config.json %s=%r is not usable; left out", source, config[source])
                continue
            out[key] = config[source]
    return out


# ---------------------------------------------------------------------------------------------- the entry


def _resolve(model: str, settings: Settings) -> tuple[Path, str | None]:
    """A folder argument, or an id the server discovers; with the id it is discovered as."""
    model_dir = settings.model_dir
    discovered = discover_models(model_dir)
    path = Path(model).expanduser()
    if not path.exists():
        if model not in discovered:
            raise ToolError(f"{model!r} is neither a folder nor a model id in {model_dir}")
        path = discovered[model]
    if path.is_file() and path.suffix == ".gguf":
        raise ToolError(f"{path.name} is a GGUF file: import it first (helper_tools/mlx_gguf_import.py), "
                        "then run this on the folder it writes")
    if not path.is_dir():
        raise ToolError(f"{path} is not a model folder")
    found = next((mid for mid, p in discovered.items() if p.resolve() == path.resolve()), None)
    return path, found


def _config_path(folder: Path, model_dir: Path) -> str:
    """``path`` as config.json takes it: relative to the model directory when inside it."""
    try:
        return folder.absolute().relative_to(model_dir.absolute()).as_posix()
    except ValueError:
        return str(folder.resolve())


def inspect_model(model: str, settings: Settings, model_id: str | None = None) -> Findings:
    """Read a model folder and build its entry (validated with ``ModelConfig``)."""
    folder, discovered_id = _resolve(model, settings)
    problems = folder_problems(folder)
    if problems:
        raise ToolError(f"{folder} is not a complete model folder: {'; '.join(problems)}")
    config = _read_json(folder / "config.json")
    model_type = str(config.get("model_type") or (config.get("text_config") or {}).get("model_type") or "")
    weights = sum(safetensors_tensor_bytes(path) for path in _weight_files(folder))
    template, source = chat_template_of(folder)
    specials = _special_tokens(folder)
    family = detect_family(template or specials, model_type)
    reasoning_format = detect_reasoning_format(template)
    reasons = reasoning_format == "harmony" or "<think>" in (template or "") + specials
    context = _context_length(config)

    entry: dict[str, Any] = {}
    if discovered_id is None or (model_id and model_id != discovered_id):
        # Not found by its id (outside the model directory, or an alias): say where it is.
        entry["path"] = _config_path(folder, settings.model_dir)
    # The tokenizer's own template is the best prompt format there is; a named one only without it.
    entry["chat_template"] = "auto" if template else (family or "generic")
    if context:
        entry["context_length"] = context
    entry["required_memory_gb"] = max(math.ceil(weights / GB * 1000) / 1000, 0.001)
    probe = ModelEntry(discovered_id or folder.name, folder, ModelConfig(context_length=context), "discovered", weights)
    entry["supports_tools"] = probe.supports_tools
    entry["supports_vision"] = probe.supports_vision
    if reasons:
        entry["reasoning_response"] = "enable"
    entry.update(_sampling(folder))
    defaults = settings.defaults
    return Findings(
        model_id=model_id or discovered_id or folder.name,
        folder=folder,
        weight_bytes=weights,
        kv_bytes_per_token=kv_bytes_per_token(folder),
        kv_allowance_bytes=kv_allowance_bytes(probe, defaults, prefix_cache_bytes(probe, defaults, memory_budget_bytes(defaults))),
        context_length=context,
        template_source=source,
        family=family,
        reasoning_format=reasoning_format if reasons else None,
        entry=_validated(entry),
    )


def _validated(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as the server will read it; a failure here is a bug in this tool."""
    try:
        ModelConfig.model_validate(entry)
    except ValidationError as exc:
        raise ToolError(f"the entry does not validate as a model config (a bug in this tool): {exc}") from None
    return entry


# ---------------------------------------------------------------------------------------------- benchmark


def run_benchmark(folder: Path, prompt_tokens: int, gen_tokens: int, trials: int) -> dict[str, Any]:
    """Load with mlx-lm; time ``trials`` greedy runs of a random prompt after one warm-up.

    EOS gets a logit bias of -1e9 so every run generates exactly ``gen_tokens`` tokens.
    Rates are mlx-lm's own (``stream_generate``'s prompt_tps and generation_tps), medians."""
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_logits_processors

    model, tokenizer = load(str(folder))[:2]
    mx.eval(model.parameters())
    active = int(mx.get_active_memory())
    special = set(tokenizer.all_special_ids) | set(tokenizer.eos_token_ids or ())
    rows = getattr(getattr(model, "args", None), "vocab_size", None) or len(tokenizer.get_vocab())
    ordinary = [i for i in range(min(rows, len(tokenizer.get_vocab()))) if i not in special]
    rng = random.Random(0)
    prompt = [rng.choice(ordinary) for _ in range(prompt_tokens)]
    processors = make_logits_processors(logit_bias={int(t): -1e9 for t in tokenizer.eos_token_ids or ()})

    def one_run() -> Any:
        last = None
        for last in stream_generate(model, tokenizer, prompt, max_tokens=gen_tokens, logits_processors=processors):
            pass
        return last

    one_run()  # warm-up: kernels compiled, caches allocated
    runs = [one_run() for _ in range(trials)]
    return {
        "prompt_tokens": prompt_tokens,
        "generated_tokens": runs[-1].generation_tokens,
        "trials": trials,
        "prompt_tps": statistics.median(r.prompt_tps for r in runs),
        "decode_tps": statistics.median(r.generation_tps for r in runs),
        "peak_memory_gb": max(r.peak_memory for r in runs),
        "active_memory_bytes": active,
        "device": "gpu" if mx.default_device() == mx.gpu else "cpu",
    }


# ---------------------------------------------------------------------------------------------- output


def _summary(f: Findings) -> str:
    def gb(n: int) -> str:
        return f"{n / GB:.3f} GB"

    lines = [
        f"model:           {f.model_id}  ({f.folder})",
        f"weights:         {human_size(f.weight_bytes)} (from the safetensors headers)",
        f"context length:  {f.context_length or 'not in config.json (the server assumes 4096)'}",
        f"KV cache:        {human_size(f.kv_bytes_per_token)} per token",
        (f"memory:          required_memory_gb {f.entry['required_memory_gb']} (weights) + KV allowance "
         f"{gb(f.kv_allowance_bytes)} (defaults.kv_allowance_tokens of KV + prefix_cache_bytes, added by the "
         f"server) = {gb(int(f.entry['required_memory_gb'] * GB) + f.kv_allowance_bytes)} resident"),
        "chat template:   " + (f"its own ({f.template_source}), {f.family or 'unrecognised'} family"
                                if f.template_source else f"none in the folder; named template {f.entry['chat_template']!r}"),
        f"reasoning:       {f.reasoning_format or 'none detected'}",
        f"tools / vision:  {f.entry['supports_tools']} / {f.entry['supports_vision']}",
    ]
    b = f.benchmark
    if b:
        lines.append(f"benchmark ({b['device']}): prompt {b['prompt_tps']:.1f} tokens/s ({b['prompt_tokens']} tokens), "
                     f"decode {b['decode_tps']:.1f} tokens/s ({b['generated_tokens']} tokens), median of "
                     f"{b['trials']}; MLX memory after load {gb(b['active_memory_bytes'])}, peak {b['peak_memory_gb']:.3f} GB")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    findings = inspect_model(args.model, settings, args.model_id)
    if args.benchmark:
        findings.benchmark = run_benchmark(findings.folder, args.prompt_tokens, args.gen_tokens, args.trials)
        measured = max(findings.weight_bytes, findings.benchmark["active_memory_bytes"])
        findings.entry["required_memory_gb"] = max(math.ceil(measured / GB * 1000) / 1000, 0.001)
        findings.entry = _validated(findings.entry)
    entry = json.dumps({findings.model_id: findings.entry}, indent=2, ensure_ascii=False)
    if args.json:
        print(entry)
        return EXIT_OK
    print(_summary(findings))
    print("\nentry for the `models` section of config.json:")
    print(entry)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status instead of raising, for tests and wrappers."""
    return run_tool(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
