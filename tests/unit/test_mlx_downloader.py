"""helper_tools/mlx_downloader.py against a local fake Hub (tests/fixtures/fake_hub.py).

The downloads run the real ``huggingface_hub`` client in a subprocess (its endpoint and offline
switch are read from the environment at import), pointed at a server on 127.0.0.1 through
``HF_ENDPOINT``; nothing reaches the internet. A download must land where the server's own
discovery (``discover_models`` / ``build_registry``) finds it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helper_tools import mlx_downloader as downloader
from mlx_router.fabricate import make_tiny_llm
from mlx_router.manager.registry import build_registry, discover_models
from tests.fixtures.fake_hub import FakeHub, HubRepo

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "helper_tools" / "mlx_downloader.py"




@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> HubRepo:
    """A tiny model as a Hub repository, with files an MLX download must leave behind."""
    folder = make_tiny_llm(tmp_path_factory.mktemp("hub") / "tiny")
    repo = HubRepo.from_folder(folder)
    repo.files["README.md"] = b"# tiny\n"
    repo.files["pytorch_model.bin"] = b"\0" * 64
    repo.files["original/consolidated.pth"] = b"\0" * 64
    return repo


def _run(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLX_ROUTER_")) and k != "MLX_MODEL_DIR"}
    full.update(env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=full, input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
            "MLX_MODEL_DIR": str(tmp_path / "models"), **extra}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_download_lands_where_the_server_discovers_it(tmp_path: Path, tiny_repo: HubRepo) -> None:
    with FakeHub({"acme/tiny-llama": tiny_repo}) as hub:
        result = _run(["download", "acme/tiny-llama"], _env(tmp_path, hub.url))
        requested = list(hub.requests)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "models" / "acme" / "tiny-llama"
    assert "served as model id 'acme/tiny-llama'" in result.stdout
    assert "Traceback" not in result.stderr
    assert "%|" in result.stderr  # huggingface_hub's progress bars
    # Only what an MLX model needs; every such file arrives byte for byte.
    for name in ("config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (folder / name).read_bytes() == tiny_repo.files[name], name
    assert not (folder / "README.md").exists()
    assert not (folder / "pytorch_model.bin").exists()
    assert not (folder / "original").exists()
    assert not any("pytorch_model.bin" in path for _, path in requested)
    assert ("GET", "/api/models/acme/tiny-llama/revision/main") in requested
    # The server's own discovery and registry serve it under the Hub id, with its weights measured.
    assert discover_models(tmp_path / "models") == {"acme/tiny-llama": folder}
    entry = build_registry({}, tmp_path / "models")["acme/tiny-llama"]
    assert entry.weight_bytes == len(tiny_repo.files["model.safetensors"])

    listed = _run(["list", "--json"], _env(tmp_path, hub.url))
    assert listed.returncode == 0, listed.stderr
    [model] = json.loads(listed.stdout)
    assert model["id"] == "acme/tiny-llama" and model["complete"] and model["problems"] == []
    fetched = [n for n in tiny_repo.files if not n.startswith(("README", "pytorch", "original"))]
    assert model["size_bytes"] == sum(len(tiny_repo.files[n]) for n in fetched)

    removed = _run(["remove", "acme/tiny-llama", "--yes"], _env(tmp_path, hub.url))
    assert removed.returncode == 0, removed.stderr
    assert not (tmp_path / "models" / "acme").exists()  # the emptied org folder goes too
    assert discover_models(tmp_path / "models") == {}


def test_second_download_fetches_no_file_again(tmp_path: Path, tiny_repo: HubRepo) -> None:
    with FakeHub({"acme/tiny-llama": tiny_repo}) as hub:
        assert _run(["download", "acme/tiny-llama", "-q"], _env(tmp_path, hub.url)).returncode == 0
        hub.requests.clear()
        again = _run(["download", "acme/tiny-llama", "-q"], _env(tmp_path, hub.url))
        gets = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert again.returncode == 0, again.stderr
    assert gets == []
    assert "Fetching" not in again.stderr  # --quiet: no progress bars


def test_a_repository_without_safetensors_is_refused_before_downloading(tmp_path: Path) -> None:
    repo = HubRepo({"config.json": b"{}", "pytorch_model.bin": b"\0" * 8, "tokenizer.json": b"{}"})
    with FakeHub({"acme/torch-only": repo}) as hub:
        result = _run(["download", "acme/torch-only"], _env(tmp_path, hub.url))
        fetched = [path for _, path in hub.requests if "/resolve/" in path]
    assert result.returncode == 2
    assert "no .safetensors weights" in result.stderr and "mlx_lm.convert" in result.stderr
    assert fetched == []


@pytest.mark.parametrize(
    ("repo_id", "extra_args", "expected"),
    [
        ("acme/missing", [], "repository acme/missing was not found"),
        ("acme/secret", [], "or private (log in with `hf auth login` or set HF_TOKEN)"),
        ("acme/tiny-llama", ["--revision", "v9"], "revision 'v9' was not found in acme/tiny-llama"),
        ("not a repo id", [], "is not a Hub repository id"),
        ("acme/../etc", [], "is not a Hub repository id"),
    ],
)
def test_hub_refusals_are_one_line(
    tmp_path: Path, tiny_repo: HubRepo, repo_id: str, extra_args: list[str], expected: str
) -> None:
    with FakeHub({"acme/tiny-llama": tiny_repo}, private=frozenset({"acme/secret"})) as hub:
        result = _run(["download", repo_id, *extra_args], _env(tmp_path, hub.url))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "models").exists() or discover_models(tmp_path / "models") == {}


@pytest.mark.parametrize(
    ("endpoint", "env", "expected"),
    [
        ("closed", {}, "cannot reach the Hugging Face Hub at http://127.0.0.1:"),
        ("http://hub.invalid", {}, "cannot reach the Hugging Face Hub at http://hub.invalid"),
        ("closed", {"HF_HUB_OFFLINE": "1"}, "switched off (HF_HUB_OFFLINE is set)"),
    ],
)
def test_unreachable_or_offline_hub_is_one_line(
    tmp_path: Path, endpoint: str, env: dict[str, str], expected: str
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}" if endpoint == "closed" else endpoint
    result = _run(["download", "acme/tiny-llama"], _env(tmp_path, url, **env))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_offline_hub_with_an_existing_folder_still_fails(tmp_path: Path, tiny_repo: HubRepo) -> None:
    """huggingface_hub would return the existing folder as if downloaded; the tool says it did not."""
    with FakeHub({"acme/tiny-llama": tiny_repo}) as hub:
        assert _run(["download", "acme/tiny-llama", "-q"], _env(tmp_path, hub.url)).returncode == 0
    result = _run(["download", "acme/tiny-llama"], _env(tmp_path, f"http://127.0.0.1:{_closed_port()}"))
    assert result.returncode == 2 and "cannot reach" in result.stderr


# ---------------------------------------------------------------------------------------------- in-process


def _shard(folder: Path, names: list[str], present: list[str]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {f"w{i}": name for i, name in enumerate(names)}}))
    for name in present:
        (folder / name).write_bytes(b"\0" * 10)


def test_list_reports_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    _shard(models / "org" / "sharded", ["a.safetensors", "b.safetensors"], ["a.safetensors"])
    (models / "org" / "sharded" / "tokenizer.json").write_text("{}")
    _shard(models / "no-tokenizer", ["a.safetensors"], ["a.safetensors"])
    (models / "half" / "x" / ".cache" / "huggingface").mkdir(parents=True)  # interrupted download
    (models / "file.gguf").write_bytes(b"GGUF")

    assert downloader.main(["list", "--json", "--model-dir", str(models)]) == 0
    listed = {m["id"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["org/sharded"]["problems"] == ["1 of 2 weight shards missing (b.safetensors)"]
    assert listed["org/sharded"]["size_bytes"] == 10 + 2 + 2 + len((models / "org/sharded/model.safetensors.index.json").read_text())
    assert listed["no-tokenizer"]["problems"] == ["no tokenizer (tokenizer.json or tokenizer.model)"]
    assert set(listed["half/x"]["problems"]) >= {"no config.json", "no *.safetensors weights"}
    assert listed["file"] == {"id": "file", "path": str(models / "file.gguf"), "kind": "gguf", "size_bytes": 4,
                              "complete": True, "problems": []}

    assert downloader.main(["list", "--model-dir", str(models)]) == 0
    table = capsys.readouterr().out
    assert "INCOMPLETE: 1 of 2 weight shards missing" in table and "file" in table


def test_model_dir_comes_from_env_then_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"defaults": {"model_directory": str(tmp_path / "from-config")}}))
    monkeypatch.delenv("MLX_MODEL_DIR", raising=False)
    assert downloader.main(["list", "--config", str(config)]) == 0
    assert str(tmp_path / "from-config") in capsys.readouterr().out
    monkeypatch.setenv("MLX_MODEL_DIR", str(tmp_path / "from-env"))
    assert downloader.main(["list", "--config", str(config)]) == 0
    assert str(tmp_path / "from-env") in capsys.readouterr().out
    config.write_text(json.dumps({"defaults": {"model_dirctory": "x"}}))
    assert downloader.main(["list", "--config", str(config)]) == 2
    assert "Did you mean 'model_directory'?" in capsys.readouterr().err


def test_remove_asks_and_removes_only_a_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere" / "m"
    _shard(elsewhere, ["a.safetensors"], ["a.safetensors"])
    (models / "org").mkdir(parents=True)
    (models / "org" / "m").symlink_to(elsewhere, target_is_directory=True)

    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert downloader.main(["remove", "org/m", "--model-dir", str(models)]) == 2
    assert (models / "org" / "m").is_symlink()
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert downloader.main(["remove", "org/m", "--model-dir", str(models)]) == 0
    assert not (models / "org").exists()
    assert (elsewhere / "a.safetensors").is_file()  # the link's target is untouched
    assert "the link" in capsys.readouterr().out

    assert downloader.main(["remove", "org/m", "--model-dir", str(models), "--yes"]) == 2
    assert "no model 'org/m'" in capsys.readouterr().err


def test_remove_takes_a_whole_hf_cache_repository(tmp_path: Path) -> None:
    models = tmp_path / "models"
    snapshot = models / "models--org--cached" / "snapshots" / "abc"
    _shard(snapshot, ["a.safetensors"], ["a.safetensors"])
    (snapshot / "tokenizer.json").write_text("{}")
    assert discover_models(models) == {"org/cached": snapshot}
    assert downloader.main(["remove", "org/cached", "--model-dir", str(models), "--yes"]) == 0
    assert list(models.iterdir()) == []


def test_remove_a_gguf_file_takes_its_imported_copy_too(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "org").mkdir(parents=True)
    (models / "org" / "q.gguf").write_bytes(b"GGUF")
    imported = models / ".gguf-imports" / "org__q"  # where the server imports it on first use
    imported.mkdir(parents=True)
    (imported / "config.json").write_text("{}")
    (models / "other.gguf").write_bytes(b"GGUF")
    assert downloader.main(["remove", "org/q", "--model-dir", str(models), "--yes"]) == 0
    assert not (models / "org").exists() and not imported.exists()
    assert discover_models(models) == {"other": models / "other.gguf"}


def test_list_refuses_a_file_as_the_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    assert downloader.main(["list", "--model-dir", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err
