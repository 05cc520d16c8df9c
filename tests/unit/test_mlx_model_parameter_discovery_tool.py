"""helper_tools/mlx_model_parameter_discovery_tool.py on tiny random-weight models.

The entry it prints must be one the server reads as meant: it is loaded back through the
server's own config loader and registry. Weight bytes are checked against MLX's own reading of
the safetensors files, the KV allowance against the formula, template families against the
official templates kept in tests/unit/official_templates/.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from helper_tools import mlx_model_parameter_discovery_tool as tool
from mlx_router.config.settings import load_settings
from mlx_router.manager.registry import build_registry

OFFICIAL = Path(__file__).parent / "official_templates"
GB = 1024**3


def _entry(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, object]]:
    assert tool.main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _set_template(folder: Path, template: str | None) -> None:
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    if template is not None:
        config["chat_template"] = template
    config_path.write_text(json.dumps(config))


def test_entry_of_a_tiny_model_is_measured_and_read_back_by_the_server(
    make_tiny_model: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import mlx.core as mx

    folder = make_tiny_model("tiny-llama")
    models = folder.parent
    entry = _entry(capsys, "tiny-llama", "--model-dir", str(models))
    tensors = mx.load(str(folder / "model.safetensors"))
    weight_bytes = sum(a.nbytes for a in tensors.values())  # MLX's reading, independent of the header parser
    assert entry == {
        "tiny-llama": {
            "chat_template": "auto",
            "context_length": 2048,
            "required_memory_gb": max(math.ceil(weight_bytes / GB * 1000) / 1000, 0.001),
            "supports_tools": False,
            "supports_vision": False,
        }
    }
    # The server reads it back: no unknown key, the values reach the model's registry entry.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"defaults": {"model_directory": str(models)}, "models": entry}))
    registry = build_registry(load_settings(config, environ={}).models, models)
    assert registry["tiny-llama"].source == "config"
    assert registry["tiny-llama"].config.context_length == 2048
    assert registry["tiny-llama"].path == folder


def test_findings_match_the_files(make_tiny_model: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_tiny_model("tiny-llama", num_layers=3)
    settings = load_settings(None, environ={"MLX_MODEL_DIR": str(tmp_path / "elsewhere")})
    found = tool.inspect_model(str(folder), settings)
    # 2 (K and V) x 3 layers x 2 KV heads x 16 head size x 4 bytes (float32), per token;
    # the allowance: min(context 2048, kv_allowance_tokens) tokens plus the prefix cache, which by
    # default holds as many tokens again.
    assert found.kv_bytes_per_token == 2 * 3 * 2 * 16 * 4
    assert found.kv_allowance_bytes == 2 * (2 * 3 * 2 * 16 * 4 * 2048)
    assert found.weight_bytes == tool.safetensors_tensor_bytes(folder / "model.safetensors")
    assert found.weight_bytes < (folder / "model.safetensors").stat().st_size  # the header is not weights
    assert found.template_source == "tokenizer_config.json" and found.family == "chatml"
    # Outside the model directory, the entry must say where the folder is.
    assert found.model_id == "tiny-llama" and found.entry["path"] == str(folder.resolve())
    assert tool.inspect_model(str(folder), settings, model_id="org/x").model_id == "org/x"


def test_an_alias_id_gets_a_path_the_server_resolves(
    make_tiny_model: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = make_tiny_model("tiny-llama")
    models = folder.parent
    entry = _entry(capsys, "tiny-llama", "--model-dir", str(models), "--id", "my-alias")
    assert entry["my-alias"]["path"] == "tiny-llama"  # relative to the model directory
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"defaults": {"model_directory": str(models)}, "models": entry}))
    registry = build_registry(load_settings(config, environ={}).models, models)
    assert registry["my-alias"].path == folder and registry["my-alias"].source == "config"


@pytest.mark.parametrize(
    ("template", "family", "reasoning", "tools"),
    [
        ("chatml.jinja", "chatml", None, False),
        ("qwen2.5.jinja", "qwen", None, True),
        ("qwen3.jinja", "qwen", "think", True),
        ("llama3.2.jinja", "llama3", None, True),
        ("llama3.3.jinja", "llama3", None, True),
        ("phi4.jinja", "phi4", None, False),
        ("deepseek-r1.jinja", "deepseek", "think", False),
        ("gpt-oss.jinja", "gpt-oss", "harmony", True),
    ],
)
def test_official_templates_are_recognised(
    make_tiny_model: Callable[..., Path], tmp_path: Path, template: str, family: str,
    reasoning: str | None, tools: bool
) -> None:
    folder = make_tiny_model("m")
    _set_template(folder, None)
    (folder / "chat_template.jinja").write_text((OFFICIAL / template).read_text())  # transformers' newer layout
    settings = load_settings(None, environ={"MLX_MODEL_DIR": str(folder.parent)})
    found = tool.inspect_model(str(folder), settings)
    assert (found.family, found.reasoning_format, found.template_source) == (family, reasoning, "chat_template.jinja")
    assert found.entry["supports_tools"] is tools
    assert found.entry["chat_template"] == "auto"  # the model's own template is the best format
    assert found.entry.get("reasoning_response") == ("enable" if reasoning else None)


def test_without_a_template_a_named_one_is_chosen(make_tiny_model: Callable[..., Path], tmp_path: Path) -> None:
    settings = load_settings(None, environ={"MLX_MODEL_DIR": str(tmp_path)})
    llama = make_tiny_model("llama")
    _set_template(llama, None)
    found = tool.inspect_model(str(llama), settings)
    assert found.template_source is None
    assert found.entry["chat_template"] == "chatml"  # from the <|im_start|> special token
    qwen = make_tiny_model("qwen", model_type="qwen2")
    _set_template(qwen, None)
    assert tool.inspect_model(str(qwen), settings).entry["chat_template"] == "qwen"
    assert tool.detect_family("### User: hi") is None


def test_vision_and_sampling_come_from_the_configs(make_tiny_model: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_tiny_model("v")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"] = {"depth": 2}
    (folder / "config.json").write_text(json.dumps(config))
    generation = json.loads((folder / "generation_config.json").read_text())
    generation.update(do_sample=True, temperature=0.6, top_p=0.95, top_k=20, min_p=7)  # min_p out of range
    (folder / "generation_config.json").write_text(json.dumps(generation))
    settings = load_settings(None, environ={"MLX_MODEL_DIR": str(tmp_path)})
    entry = tool.inspect_model(str(folder), settings).entry
    assert entry["supports_vision"] is True
    assert (entry["temp"], entry["top_p"], entry["top_k"]) == (0.6, 0.95, 20) and "min_p" not in entry
    generation["do_sample"] = False
    (folder / "generation_config.json").write_text(json.dumps(generation))
    assert "temp" not in tool.inspect_model(str(folder), settings).entry


def test_human_summary(make_tiny_model: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_tiny_model("tiny-llama")
    assert tool.main([str(folder), "--model-dir", str(folder.parent)]) == 0
    out = capsys.readouterr().out
    assert "chat template:   its own (tokenizer_config.json), chatml family" in out
    assert "KV cache:        512 B per token" in out
    assert json.loads(out.split("config.json:\n", 1)[1]) == _entry(capsys, str(folder), "--model-dir", str(folder.parent))


def test_broken_folders_are_one_line_errors(make_tiny_model: Callable[..., Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_tiny_model("broken")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    cases = [
        ([str(folder)], "model.safetensors is truncated"),
        ([str(tmp_path / "nothing")], "is neither a folder nor a model id"),
        ([str(tmp_path)], "is not a complete model folder: no config.json"),
    ]
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    cases.append(([str(gguf)], "import it first"))
    for args, expected in cases:
        assert tool.main([*args, "--model-dir", str(tmp_path / "models")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    weights.write_bytes(b"\xff" * 16)
    assert tool.main([str(folder), "--model-dir", str(tmp_path)]) == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert tool.main([str(folder), "--gen-tokens", "0"]) == 2
