#!/usr/bin/env python3
"""Download models from the Hugging Face Hub into the model directory the server serves.

Usage:
    python helper_tools/mlx_downloader.py download mlx-community/Qwen3-0.6B-4bit [--revision REV]
    python helper_tools/mlx_downloader.py list [--json]
    python helper_tools/mlx_downloader.py remove mlx-community/Qwen3-0.6B-4bit [--yes]

Why a separate tool: the server never downloads while serving (a request must not be able to
make it fetch any repository). Downloads happen here, ahead of time, into
``<model_dir>/<org>/<name>``, the ``org/name`` layout the server's discovery reads; the model is
then served under its Hub id. Only what an MLX model needs is fetched (config, safetensors
weights, tokenizer and chat-template files). The Hub is reached with ``huggingface_hub``
(``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE`` apply) and shows its progress bars.
Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # runnable as `python helper_tools/mlx_downloader.py`
    sys.path.insert(0, str(_REPO_ROOT))

from helper_tools._common import (
    EXIT_ERROR,
    EXIT_OK,
    OneLineParser,
    ToolError,
    common_options,
    folder_problems,
    human_size,
    is_inside,
    run_tool,
    settings_of,
    tree_size,
)
from mlx_router.manager.registry import IMPORT_DIR_NAME, discover_models

logger = logging.getLogger(__name__)

__all__ = ["ALLOW_PATTERNS", "LocalModel", "build_parser", "local_models", "main"]

ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "merges.txt", "vocab.txt")
"""Files an MLX model folder needs: config, weights (and their index), tokenizer, chat template.
Not fetched: PyTorch/GGUF weights, code (the server never runs a repository's code), docs."""


@dataclass
class LocalModel:
    """A model in the model directory, as ``list`` shows it."""

    id: str
    path: Path
    size: int
    problems: list[str]

    @property
    def kind(self) -> str:
        if self.path.is_symlink():
            return f"link to {os.readlink(self.path)}"
        if self.path.suffix == ".gguf":
            return "gguf"
        snapshots = self.path.parent
        return "hf-cache" if snapshots.name == "snapshots" and snapshots.parent.name.startswith("models--") else "folder"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; kept separate so tests and docs can render it."""
    parser = OneLineParser(
        prog="mlx_downloader.py",
        description="Download Hugging Face models into mlx-router's model directory, list and remove them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{download,list,remove}")
    parent = common_options()
    down = sub.add_parser("download", parents=[parent], help="download a Hub model (org/name)")
    down.add_argument("repo_id", help="the Hub repository, e.g. mlx-community/Qwen3-0.6B-4bit")
    down.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    down.add_argument("--include", action="append", default=[], metavar="PATTERN",
                      help="also fetch files matching this glob (repeatable)")
    down.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    listing = sub.add_parser("list", parents=[parent], help="models in the model directory: size, completeness")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    remove = sub.add_parser("remove", parents=[parent], help="delete a model from the model directory")
    remove.add_argument("model_id", help="the id `list` shows")
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    return parser


# ---------------------------------------------------------------------------------------------- download


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network errors of the HTTP library huggingface_hub uses (httpx2 from 2.x, httpx in 1.x;
    older releases use requests, whose errors are OSErrors)."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _hub_message(exc: BaseException, repo_id: str, revision: str, endpoint: str) -> str | None:
    """A one-line explanation of a Hub failure, or None when ``exc`` is not one."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return "the Hugging Face Hub is switched off (HF_HUB_OFFLINE is set); unset it to download"
    if isinstance(exc, GatedRepoError):
        return (f"{repo_id} is gated: accept its terms on the Hub, then log in (`hf auth login`) "
                "or set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        status = exc.response.status_code if exc.response is not None else 404
        private = " or private (log in with `hf auth login` or set HF_TOKEN)" if status in (401, 403) else ""
        return f"repository {repo_id} was not found on {endpoint}{private}; check the name"
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {revision!r} was not found in {repo_id}"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "an"
        return f"the Hub at {endpoint} answered with HTTP {status} error for {repo_id}; try again later"
    if isinstance(exc, (LocalEntryNotFoundError, *_transport_errors(), ConnectionError, TimeoutError)):
        reason = " ".join(str(exc).split())[:160]
        return f"cannot reach the Hugging Face Hub at {endpoint} ({reason}); check the network or HF_ENDPOINT"
    return None


def _target_of(model_dir: Path, repo_id: str) -> Path:
    """``<model_dir>/<org>/<name>``: discovered as ``org/name``, the repository's own id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ToolError(f"{repo_id!r} is not a Hub repository id (org/name): {exc}") from None
    parts = repo_id.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ToolError(f"{repo_id!r} is not a Hub repository id (org/name)")
    return model_dir.joinpath(*parts)


def _download(args: argparse.Namespace) -> int:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.utils import disable_progress_bars, filter_repo_objects

    model_dir = settings_of(args).model_dir
    target = _target_of(model_dir, args.repo_id)
    if target.is_symlink():
        raise ToolError(f"{target} is a link (to {os.readlink(target)}); remove it first to download here")
    if target.exists() and not target.is_dir():
        raise ToolError(f"{target} exists and is not a folder")
    patterns = [*ALLOW_PATTERNS, *args.include]
    endpoint = constants.ENDPOINT
    if args.quiet:
        disable_progress_bars()
    try:
        if constants.HF_HUB_OFFLINE:
            raise _offline_error()
        # Resolve the revision first: its errors (unknown repo, no access, no network) then
        # come from one call, and snapshot_download does not fall back to an existing folder.
        info = HfApi().repo_info(args.repo_id, revision=args.revision, files_metadata=True)
        files = {s.rfilename: s.size for s in info.siblings or []}
        wanted = list(filter_repo_objects(list(files), allow_patterns=patterns))
        if files and not any(name.endswith(".safetensors") for name in wanted):
            raise ToolError(
                f"{args.repo_id} has no .safetensors weights: mlx-router serves MLX models. Pick an MLX "
                "version (e.g. from mlx-community) or convert it with `mlx_lm.convert`")
        total = sum(files[name] or 0 for name in wanted)
        print(f"{args.repo_id} @ {args.revision} ({(info.sha or '')[:12]}): {len(wanted)} files, "
              f"{human_size(total)} -> {target}", flush=True)
        snapshot_download(args.repo_id, revision=info.sha, local_dir=target, allow_patterns=patterns)
    except ToolError:
        raise
    except Exception as exc:
        message = _hub_message(exc, args.repo_id, args.revision, endpoint)
        if message is None:
            raise
        logger.debug("hub failure", exc_info=True)
        raise ToolError(message) from None
    return _report_download(model_dir, args.repo_id, target)


def _offline_error() -> Exception:
    from huggingface_hub.errors import OfflineModeIsEnabled

    return OfflineModeIsEnabled("HF_HUB_OFFLINE is set")


def _report_download(model_dir: Path, repo_id: str, target: Path) -> int:
    """Check the folder the way the server will see it; say under which id it is served."""
    problems = folder_problems(target)
    if problems:
        raise ToolError(f"downloaded to {target}, but it is incomplete: {'; '.join(problems)}")
    served = discover_models(model_dir)
    if served.get(repo_id) != target:
        other = served.get(repo_id)
        where = f"from {other}" if other else "not at all"
        raise ToolError(f"downloaded to {target}, but the server would serve {repo_id} {where}; "
                        "check the model directory for a folder of the same name")
    print(f"ready: {human_size(tree_size(target))} in {target}; served as model id {repo_id!r} "
          f"(entry for config.json: helper_tools/mlx_model_parameter_discovery_tool.py {repo_id})")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- list


def local_models(model_dir: Path) -> list[LocalModel]:
    """What the server discovers in ``model_dir``, plus downloads that do not declare a model
    yet (a folder holding huggingface_hub's ``.cache`` but no config.json: interrupted)."""
    found = dict(discover_models(model_dir))
    if model_dir.is_dir():
        for marker in [*model_dir.glob("*/.cache/huggingface"), *model_dir.glob("*/*/.cache/huggingface")]:
            folder = marker.parent.parent
            model_id = folder.relative_to(model_dir).as_posix()
            if not model_id.startswith(".") and folder not in found.values():
                found.setdefault(model_id, folder)
    return [LocalModel(mid, path, tree_size(path), folder_problems(path)) for mid, path in sorted(found.items())]


def _list(args: argparse.Namespace) -> int:
    model_dir = settings_of(args).model_dir
    models = local_models(model_dir)
    if args.json:
        print(json.dumps([{"id": m.id, "path": str(m.path), "kind": m.kind, "size_bytes": m.size,
                           "complete": not m.problems, "problems": m.problems} for m in models], indent=2))
        return EXIT_OK
    if not models:
        print(f"no models in {model_dir}")
        return EXIT_OK
    width = max(len(m.id) for m in models)
    print(f"models in {model_dir}:")
    for m in models:
        state = "complete" if not m.problems else "INCOMPLETE: " + "; ".join(m.problems)
        print(f"  {m.id.ljust(width)}  {human_size(m.size):>9}  {state}  ({m.kind})")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- remove


def _removal_target(model_dir: Path, model: LocalModel) -> Path:
    """What to delete for a model: its Hugging Face cache repository folder, its link, its
    folder or its .gguf file; always a path inside the model directory."""
    path = model.path.parent.parent if model.kind == "hf-cache" else model.path
    if not is_inside(path.parent, model_dir) or path.parent == path:
        raise ToolError(f"{path} is outside the model directory {model_dir}; not removed")
    return path


def _confirm(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _remove(args: argparse.Namespace) -> int:
    model_dir = settings_of(args).model_dir
    model = next((m for m in local_models(model_dir) if m.id == args.model_id), None)
    if model is None:
        raise ToolError(f"no model {args.model_id!r} in {model_dir} (`list` shows what is there)")
    target = _removal_target(model_dir, model)
    imported = model_dir / IMPORT_DIR_NAME / model.id.replace("/", "__")
    what = f"the link {target} (its target stays)" if target.is_symlink() else f"{target} ({human_size(model.size)})"
    if not args.yes and not _confirm(f"Remove {model.id}: {what}?"):
        print("not removed")
        return EXIT_ERROR
    if target.is_symlink() or target.is_file():
        target.unlink()
    else:
        shutil.rmtree(target)
    if model.path.suffix == ".gguf" and imported.is_dir():
        shutil.rmtree(imported)  # the server's MLX copy of that GGUF file
    parent = target.parent
    if parent != model_dir and is_inside(parent, model_dir) and not any(parent.iterdir()):
        parent.rmdir()  # the now empty org folder
    print(f"removed {model.id}: {what}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status instead of raising, for tests and wrappers."""
    commands = {"download": _download, "list": _list, "remove": _remove}
    return run_tool(build_parser(), argv, lambda args: commands[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
