"""The tiny vision fixture writes a folder that mlx-vlm loads and runs like a Qwen2-VL checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mlx_router.fabricate import IMAGE_PAD_TOKEN, make_tiny_vlm


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-vlm")


def test_loads_and_expands_each_image_into_its_tokens(vlm_dir: Path) -> None:
    from mlx_vlm import apply_chat_template, load
    from mlx_vlm.utils import prepare_inputs

    model, processor = load(str(vlm_dir))
    assert type(processor).__name__ == "Qwen2VLProcessor"  # mlx-vlm's own, not a fallback
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image"}, {"type": "image"}]}]
    prompt = apply_chat_template(processor, model.config, messages, num_images=2)
    assert prompt.count(IMAGE_PAD_TOKEN) == 2
    small, large = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (600, 400), "blue")
    inputs = prepare_inputs(processor, images=[small, large], prompts=prompt)
    pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN)
    # 56 px: 4×4 patches merged 2×2 → 4 tokens; 600×400 is scaled into max_pixels (112²) with its
    # shape kept, 84×112: 6×8 patches → 12 tokens.
    assert inputs["input_ids"][0].tolist().count(pad) == 4 + 12
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4], [1, 6, 8]]


def test_greedy_generation_produces_every_token_and_sees_the_image(vlm_dir: Path) -> None:
    from mlx_vlm import apply_chat_template, generate, load

    model, processor = load(str(vlm_dir))
    prompt = apply_chat_template(processor, model.config, "What is it?", num_images=1)

    def answer(color: str) -> list[int]:
        result = generate(model, processor, prompt, image=[Image.new("RGB", (56, 56), color)], max_tokens=8, verbose=False)
        assert result.generation_tokens == 8 and result.finish_reason == "length"
        return list(result.token_ids)

    assert answer("red") == answer("red")
    assert answer("red") != answer("blue")


def test_same_arguments_same_files(tmp_path: Path) -> None:
    first = make_tiny_vlm(tmp_path / "a")
    second = make_tiny_vlm(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    config = json.loads((first / "config.json").read_text())
    assert "vision_config" in config  # what the registry infers supports_vision from
