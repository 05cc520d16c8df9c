#!/usr/bin/env python3
"""Share models between mlx-router's model directory and LM Studio's, with symbolic links.

Usage:
    python helper_tools/mlx_lmstudio_linker.py to-lmstudio   [--dry-run]   # router models in LM Studio
    python helper_tools/mlx_lmstudio_linker.py from-lmstudio [--dry-run]   # LM Studio models in the router
    python helper_tools/mlx_lmstudio_linker.py unlink        [--dry-run]   # remove the links made here

Why links: model weights are gigabytes; a link costs nothing and never goes stale. LM Studio keeps
models as ``<publisher>/<model>/`` folders (MLX folders, or folders holding ``.gguf`` files)
under ``~/.lmstudio/models``; the router discovers ``org/name`` folders and ``org/<file>.gguf``
under its model directory. Rules: nothing is ever copied; an existing file or folder is never
replaced (a real folder of the same name is reported as refused); running twice reports "already
linked"; ``unlink`` removes only symbolic links that point into the other tree, and then folders
it leaves empty. Exit status: 0, or 1 when something was refused, 2 on errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # runnable as `python helper_tools/mlx_lmstudio_linker.py`
    sys.path.insert(0, str(_REPO_ROOT))

from helper_tools._common import (
    EXIT_OK,
    OneLineParser,
    ToolError,
    common_options,
    is_inside,
    run_tool,
    settings_of,
)
from mlx_router.manager.registry import discover_models

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_LMSTUDIO_DIR", "EXIT_REFUSED", "Link", "build_parser", "lmstudio_models", "main", "plan"]

DEFAULT_LMSTUDIO_DIR = "~/.lmstudio/models"
EXIT_REFUSED = 1
UNLINK_DEPTH = 3
"""Levels searched for links: LM Studio's publisher/model/file.gguf is the deepest made here."""


@dataclass(frozen=True)
class Link:
    """A link to make: ``path`` (in one tree) pointing at ``target`` (a model in the other)."""

    model_id: str
    path: Path
    target: Path


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; kept separate so tests and docs can render it."""
    parser = OneLineParser(
        prog="mlx_lmstudio_linker.py",
        description="Link mlx-router models into LM Studio's model folder and back, without copying.",
    )
    parent = common_options()
    parent.add_argument("--lmstudio-dir", default=DEFAULT_LMSTUDIO_DIR,
                        help=f"LM Studio's models folder (default: {DEFAULT_LMSTUDIO_DIR})")
    parent.add_argument("-n", "--dry-run", action="store_true", help="say what would be done; change nothing")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{to-lmstudio,from-lmstudio,unlink}")
    to = sub.add_parser("to-lmstudio", parents=[parent],
                        help="link the router's models into LM Studio (<publisher>/<name>)")
    to.add_argument("--publisher", default="mlx-router",
                    help="LM Studio publisher folder for models without an org (default: mlx-router)")
    sub.add_parser("from-lmstudio", parents=[parent], help="link LM Studio's models into the router's model directory")
    sub.add_parser("unlink", parents=[parent], help="remove the links this tool made, in both folders")
    return parser


# ---------------------------------------------------------------------------------------------- what to link


def lmstudio_models(lmstudio_dir: Path) -> dict[str, Path]:
    """LM Studio's models: ``publisher/model`` MLX folders (with config.json), and the ``.gguf``
    files in other model folders as ``publisher/<file stem>`` (vision projector files left out)."""
    found: dict[str, Path] = {}
    for publisher in _subdirs(lmstudio_dir):
        for model in _subdirs(publisher):
            if (model / "config.json").is_file():
                found.setdefault(f"{publisher.name}/{model.name}", model)
                continue
            for gguf in sorted(model.glob("*.gguf")):
                if gguf.is_file() and not gguf.name.lower().startswith("mmproj"):
                    found.setdefault(f"{publisher.name}/{gguf.stem}", gguf)
    return found


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def plan(command: str, model_dir: Path, lmstudio_dir: Path, publisher: str = "mlx-router") -> list[Link]:
    """The links a command wants. Models that are themselves links into the destination (made
    by the other command) are left out, so the trees never link in circles."""
    links = []
    if command == "to-lmstudio":
        for model_id, path in discover_models(model_dir).items():
            if is_inside(path, lmstudio_dir):
                continue
            org, _, name = model_id.rpartition("/")
            base = lmstudio_dir / (org or publisher) / name
            # LM Studio wants a model folder; a .gguf file gets one of its own holding the link.
            links.append(Link(model_id, base / path.name if path.is_file() else base, path.absolute()))
    else:
        for model_id, path in lmstudio_models(lmstudio_dir).items():
            if is_inside(path, model_dir):
                continue
            publisher_name, name = model_id.split("/", 1)
            link = model_dir / publisher_name / (path.name if path.is_file() else name)
            links.append(Link(model_id, link, path.absolute()))
    return links


# ---------------------------------------------------------------------------------------------- doing it


def _link_target(path: Path) -> Path:
    """Where a symbolic link points, as an absolute path (not resolved further)."""
    return Path(os.path.normpath(path.parent / os.readlink(path)))


def _same(a: Path, b: Path) -> bool:
    return os.path.normpath(a) == os.path.normpath(b) or os.path.realpath(a) == os.path.realpath(b)


def _apply(link: Link, dry_run: bool) -> tuple[str, bool]:
    """Make one link; return the line to print and whether it was refused."""
    if link.path.is_symlink():
        current = _link_target(link.path)
        if _same(current, link.target):
            return f"already linked  {link.path}", False
        return f"refused         {link.path}: a link to {current} is there; not replaced", True
    if link.path.exists():
        kind = "folder" if link.path.is_dir() else "file"
        return f"refused         {link.path}: a real {kind} is there; not replaced", True
    if dry_run:
        return f"would link      {link.path} -> {link.target}", False
    link.path.parent.mkdir(parents=True, exist_ok=True)
    link.path.symlink_to(link.target, target_is_directory=link.target.is_dir())
    return f"linked          {link.path} -> {link.target}", False


def _links_into(root: Path, other: Path, depth: int = UNLINK_DEPTH) -> Iterator[Path]:
    """Symbolic links below ``root`` (at most ``depth`` levels, links never followed) that point
    into ``other``."""
    if depth <= 0 or not root.is_dir() or root.is_symlink():
        return
    for child in sorted(root.iterdir()):
        if child.is_symlink():
            if is_inside(_link_target(child), other):
                yield child
        elif child.is_dir():
            yield from _links_into(child, other, depth - 1)


def _unlink(model_dir: Path, lmstudio_dir: Path, dry_run: bool) -> list[str]:
    lines = []
    for root, other in ((lmstudio_dir, model_dir), (model_dir, lmstudio_dir)):
        for link in list(_links_into(root, other)):
            if dry_run:
                lines.append(f"would unlink    {link} -> {_link_target(link)}")
                continue
            target = _link_target(link)
            link.unlink()
            lines.append(f"unlinked        {link} -> {target}")
            folder = link.parent
            while folder != root and is_inside(folder, root) and not any(folder.iterdir()):
                folder.rmdir()  # publisher / model folders made to hold the link
                folder = folder.parent
    return lines


def _run(args: argparse.Namespace) -> int:
    model_dir = settings_of(args).model_dir.absolute()
    lmstudio_dir = Path(args.lmstudio_dir).expanduser().absolute()
    if lmstudio_dir.exists() and not lmstudio_dir.is_dir():
        raise ToolError(f"LM Studio's models folder {lmstudio_dir} is a file, not a folder (see --lmstudio-dir)")
    if is_inside(model_dir, lmstudio_dir) or is_inside(lmstudio_dir, model_dir):
        raise ToolError(f"the model directory {model_dir} and LM Studio's {lmstudio_dir} overlap; "
                        "give two separate folders")
    if args.command == "unlink":
        lines = _unlink(model_dir, lmstudio_dir, args.dry_run)
        print("\n".join(lines) if lines else "no links to remove")
        return EXIT_OK
    source = model_dir if args.command == "to-lmstudio" else lmstudio_dir
    if not source.is_dir():
        raise ToolError(f"{source} does not exist; nothing to link (see --model-dir / --lmstudio-dir)")
    links = plan(args.command, model_dir, lmstudio_dir, getattr(args, "publisher", "mlx-router"))
    refused = 0
    for link in links:
        line, was_refused = _apply(link, args.dry_run)
        refused += was_refused
        print(f"{line}  ({link.model_id})")
    if not links:
        print(f"no models to link in {source}")
    return EXIT_REFUSED if refused else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status instead of raising, for tests and wrappers."""
    return run_tool(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
