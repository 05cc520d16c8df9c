"""``mlx_model_parameter_discovery_tool.py --benchmark``: real mlx-lm loading and decoding of a
tiny random-weight model, a few tokens."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from helper_tools import mlx_model_parameter_discovery_tool as tool
from mlx_router.config.settings import ModelConfig

pytestmark = pytest.mark.integration


def test_benchmark_measures_this_machine(make_tiny_model: Callable[..., Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # EOS is not silenced by the weights: the tool itself keeps decoding (a logit bias on EOS)
    # to produce every token asked for.
    folder = make_tiny_model("tiny-llama", zero_eos=False)
    result = tool.run_benchmark(folder, prompt_tokens=12, gen_tokens=6, trials=1)
    assert result["generated_tokens"] == 6 and result["prompt_tokens"] == 12
    assert result["prompt_tps"] > 0 and result["decode_tps"] > 0
    assert result["active_memory_bytes"] > 0

    args = [str(folder), "--model-dir", str(folder.parent), "--benchmark", "--prompt-tokens", "8",
            "--gen-tokens", "4", "--trials", "1"]
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    assert "benchmark (" in out and "decode" in out and "tokens/s" in out
    entry = json.loads(out.split("config.json:\n", 1)[1])["tiny-llama"]
    ModelConfig.model_validate(entry)
    assert entry["required_memory_gb"] * 1024**3 >= tool.safetensors_tensor_bytes(folder / "model.safetensors")

    assert tool.main([*args, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"tiny-llama"}  # --json: the entry only
