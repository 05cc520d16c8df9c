"""helper_tools/mlx_lmstudio_linker.py on two temporary trees: the router's model directory and
an LM Studio models folder. What matters: links, never copies; linked models are found by the
server's discovery; nothing real is replaced; unlink removes only the links it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helper_tools import mlx_lmstudio_linker as linker
from mlx_router.manager.registry import discover_models


def _model(folder: Path, weights: bytes = b"\0" * 16) -> Path:
    """A folder the router's discovery accepts (config.json and safetensors)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    models, lms = tmp_path / "models", tmp_path / "lmstudio"
    _model(models / "acme" / "tiny")
    _model(models / "plain")
    (models / "loose.gguf").write_bytes(b"GGUF")
    _model(lms / "lmstudio-community" / "Qwen3-MLX")
    (lms / "bartowski" / "Llama-GGUF").mkdir(parents=True)
    (lms / "bartowski" / "Llama-GGUF" / "Llama-Q4_K_M.gguf").write_bytes(b"GGUF")
    (lms / "bartowski" / "Llama-GGUF" / "mmproj-Llama-f16.gguf").write_bytes(b"GGUF")
    return models, lms


def _args(command: str, trees: tuple[Path, Path], *extra: str) -> list[str]:
    models, lms = trees
    return [command, "--model-dir", str(models), "--lmstudio-dir", str(lms), *extra]


def _files(root: Path) -> dict[str, str]:
    """Every entry below root: 'link -> target', 'dir' or 'file' (links not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            out[rel] = f"link -> {os.readlink(path)}" if path.is_symlink() else ("dir" if path.is_dir() else "file")
    return out


def test_to_lmstudio_links_every_router_model(trees: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    models, lms = trees
    lms_before = _files(lms)
    assert linker.main(_args("to-lmstudio", trees)) == 0
    added = {k: v.split(" -> ")[0] for k, v in _files(lms).items() if k not in lms_before}
    assert added == {"acme": "dir", "acme/tiny": "link", "mlx-router": "dir", "mlx-router/plain": "link",
                     "mlx-router/loose": "dir", "mlx-router/loose/loose.gguf": "link"}  # links only, no copies
    assert (lms / "acme" / "tiny").is_symlink()
    assert (lms / "acme" / "tiny").resolve() == (models / "acme" / "tiny").resolve()
    assert (lms / "mlx-router" / "plain").resolve() == (models / "plain").resolve()
    gguf = lms / "mlx-router" / "loose" / "loose.gguf"  # LM Studio wants publisher/model/file.gguf
    assert gguf.is_symlink() and gguf.resolve() == (models / "loose.gguf").resolve()
    assert (lms / "acme" / "tiny" / "model.safetensors").read_bytes() == b"\0" * 16
    assert "linked" in capsys.readouterr().out

    # Idempotent: the second run changes nothing and says so.
    before = _files(lms)
    assert linker.main(_args("to-lmstudio", trees)) == 0
    out = capsys.readouterr().out
    assert out.count("already linked") == 3 and "linked   " not in out.replace("already linked", "")
    assert _files(lms) == before


def test_from_lmstudio_models_are_discovered_by_the_server(trees: tuple[Path, Path]) -> None:
    models, lms = trees
    assert linker.main(_args("from-lmstudio", trees)) == 0
    found = discover_models(models)
    assert found["lmstudio-community/Qwen3-MLX"].resolve() == (lms / "lmstudio-community" / "Qwen3-MLX").resolve()
    assert found["bartowski/Llama-Q4_K_M"].resolve() == (lms / "bartowski" / "Llama-GGUF" / "Llama-Q4_K_M.gguf").resolve()
    assert "bartowski/mmproj-Llama-f16" not in found  # a vision projector is not a model
    assert (models / "lmstudio-community" / "Qwen3-MLX").is_symlink()
    assert (models / "bartowski" / "Llama-Q4_K_M.gguf").is_symlink()


def test_both_directions_then_unlink_restores_both_trees(trees: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    models, lms = trees
    router_before, lms_before = _files(models), _files(lms)
    assert linker.main(_args("to-lmstudio", trees)) == 0
    assert linker.main(_args("from-lmstudio", trees)) == 0
    # Neither direction links the other's links back: no circles.
    assert linker.main(_args("to-lmstudio", trees)) == 0
    assert linker.main(_args("from-lmstudio", trees)) == 0
    out = capsys.readouterr().out
    assert out.count("already linked") == 5
    links = [p for p in (*lms.rglob("*"), *models.rglob("*")) if p.is_symlink()]
    assert len(links) == 5
    for path in links:
        tree = lms if path.is_relative_to(lms) else models
        assert not path.resolve().is_relative_to(tree.resolve()), f"{path} links into its own tree"

    (lms / "acme" / "mine").parent.mkdir(exist_ok=True)
    (lms / "acme" / "mine").symlink_to(lms / "lmstudio-community")  # a link of the user's own: kept
    assert linker.main(_args("unlink", trees, "--dry-run")) == 0
    assert "would unlink" in capsys.readouterr().out
    assert linker.main(_args("unlink", trees)) == 0
    assert capsys.readouterr().out.count("unlinked") == 5
    assert (lms / "acme" / "mine").is_symlink()
    (lms / "acme" / "mine").unlink()
    (lms / "acme").rmdir()
    assert _files(models) == router_before and _files(lms) == lms_before
    assert linker.main(_args("unlink", trees)) == 0
    assert "no links to remove" in capsys.readouterr().out


def test_real_folders_and_foreign_links_are_never_replaced(trees: tuple[Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    lms = trees[1]
    _model(lms / "acme" / "tiny", weights=b"LM Studio's own copy")
    (lms / "mlx-router").mkdir()
    (lms / "mlx-router" / "plain").symlink_to(lms / "lmstudio-community" / "Qwen3-MLX")
    assert linker.main(_args("to-lmstudio", trees)) == linker.EXIT_REFUSED
    out = capsys.readouterr().out
    assert "a real folder is there; not replaced" in out
    assert "a link to" in out and "not replaced" in out
    assert (lms / "acme" / "tiny" / "model.safetensors").read_bytes() == b"LM Studio's own copy"
    assert (lms / "mlx-router" / "plain").resolve() == (lms / "lmstudio-community" / "Qwen3-MLX").resolve()
    assert (lms / "mlx-router" / "loose" / "loose.gguf").is_symlink()  # the rest was still linked


def test_dry_run_changes_nothing(trees: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    models, lms = trees
    router_before, lms_before = _files(models), _files(lms)
    assert linker.main(_args("to-lmstudio", trees, "--dry-run")) == 0
    assert linker.main(_args("from-lmstudio", trees, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert out.count("would link") == 5
    assert _files(models) == router_before and _files(lms) == lms_before


def test_bad_directories_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    assert linker.main(["to-lmstudio", "--model-dir", str(models), "--lmstudio-dir", str(models / "lms")]) == 2
    assert "overlap" in capsys.readouterr().err
    assert linker.main(["from-lmstudio", "--model-dir", str(models), "--lmstudio-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1
    assert linker.main(["sideways"]) == 2


@pytest.mark.parametrize(
    "script", ["mlx_lmstudio_linker.py", "mlx_model_parameter_discovery_tool.py", "mlx_downloader.py"]
)
def test_tools_run_as_scripts(script: str) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, f"helper_tools/{script}", "-h"], cwd=root, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and "usage:" in result.stdout and not result.stderr


def test_a_file_given_as_a_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    folder = tmp_path / "models"
    folder.mkdir()
    assert linker.main(["unlink", "--model-dir", str(folder), "--lmstudio-dir", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert linker.main(["unlink", "--model-dir", str(afile), "--lmstudio-dir", str(folder)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
