"""What the helper tools share: how they fail, where the model directory is, what a model
folder holds.

Each tool is a script (``python helper_tools/<tool>.py``) with ``main(argv) -> int``. Scripts
that call them can rely on one behaviour: a failure is exactly one ``error:`` line on stderr and
exit status 2, never a traceback (``-v`` logs the details). The model directory is resolved the
way the server resolves it (``load_settings``: ``MLX_MODEL_DIR``, else
``defaults.model_directory`` of ``--config``, else the built-in default), so what a tool writes
is what the server discovers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # the tools run as `python helper_tools/<tool>.py`
    sys.path.insert(0, str(_REPO_ROOT))

from mlx_router.config.settings import ConfigError, Settings, load_settings

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "OneLineParser",
    "ToolError",
    "common_options",
    "fail",
    "folder_problems",
    "human_size",
    "is_inside",
    "run_tool",
    "settings_of",
    "tree_size",
]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR = 0, 2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model", "vocab.json", "spiece.model")
"""Any one of these makes a folder's tokenizer loadable (fast, SentencePiece, tiktoken, BPE)."""


class ToolError(Exception):
    """A failure explained for the user: its text is the whole message."""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line too, like every other failure of the tools."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {message} (see -h)\n")


def common_options() -> argparse.ArgumentParser:
    """``--model-dir``, ``--config`` and ``-v``, as a parent parser for every (sub)command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--model-dir", help="the model directory (default: $MLX_MODEL_DIR, else "
                        "defaults.model_directory of --config, else ~/models)")
    parent.add_argument("--config", help="the server's config.json, read for defaults.model_directory and "
                        "the memory settings")
    parent.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parent


def settings_of(args: argparse.Namespace) -> Settings:
    """The server's settings as it would read them (file, then environment); ``--model-dir``
    wins over both."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        raise ToolError(str(exc)) from None
    if getattr(args, "model_dir", None):
        settings.defaults.model_directory = str(args.model_dir)
    if settings.model_dir.exists() and not settings.model_dir.is_dir():
        raise ToolError(f"the model directory {settings.model_dir} is a file, not a folder (see --model-dir / MLX_MODEL_DIR)")
    return settings


def fail(message: str) -> int:
    """Print exactly one line, whatever the exception text looked like."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_ERROR


def run_tool(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    run: Callable[[argparse.Namespace], int],
    expected: tuple[type[Exception], ...] = (),
) -> int:
    """Parse ``argv`` and call ``run``; every failure becomes one line and exit status 2.
    ``ToolError`` and the ``expected`` exceptions are shown as their text alone."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # -h (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ToolError, *expected) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{exc.strerror or exc}: {exc.filename or ''}")
    except KeyboardInterrupt:
        return fail("interrupted")
    except Exception as exc:  # never a traceback for users; -v logs it
        logger.debug("failed", exc_info=True)
        return fail(f"unexpected {type(exc).__name__}: {exc}")


def human_size(size: int) -> str:
    """Bytes in binary units, as the server counts them (its "GB" is 1024**3 bytes)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} TB"


def tree_size(path: Path) -> int:
    """Bytes of a model on disk: a file, or every file below a folder (links to files followed,
    as in Hugging Face cache snapshots; hidden folders such as ``.cache`` left out)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            try:
                total += (Path(folder) / name).stat().st_size
            except OSError:  # a dangling link: counts as nothing
                continue
    return total


def folder_problems(path: Path) -> list[str]:
    """Why a model folder cannot be served yet; empty when it is complete.

    Complete means: config.json, every weight shard that model.safetensors.index.json names (or
    at least one ``*.safetensors`` without an index), and a tokenizer. A ``.gguf`` file is
    complete when it exists."""
    if path.is_file():
        return []
    problems = []
    if not (path / "config.json").is_file():
        problems.append("no config.json")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            problems.append("model.safetensors.index.json is unreadable")
        else:
            missing = [name for name in names if not (path / name).is_file()]
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                problems.append(f"{len(missing)} of {len(names)} weight shards missing ({shown})")
    elif not any(path.glob("*.safetensors")):
        problems.append("no *.safetensors weights")
    if not any((path / name).is_file() for name in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        problems.append("no tokenizer (tokenizer.json or tokenizer.model)")
    return problems


def is_inside(path: str | Path, root: Path) -> bool:
    """Whether ``path`` lies in ``root`` (as written or with links resolved: either counts)."""
    paths = {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}
    bases = {os.path.normpath(os.path.abspath(root)), os.path.realpath(root)}
    return any(p == base or p.startswith(base.rstrip(os.sep) + os.sep) for p in paths for base in bases)
