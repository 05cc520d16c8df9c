"""Shared pytest configuration and fixtures for all test tiers.

Keep this file small: fixtures used by one tier belong in that tier's own conftest.py.
Each group of fixtures lives in its own delimited section below.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Tests never reach a model hub: a missing local file must fail fast instead of starting a
# download. These must be set before transformers / huggingface_hub are first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tokenizers package warns (and may deadlock) when a process forks after using threads.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Make `tests.fixtures` and `tests.openai_schemas` importable however pytest is started.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from collections.abc import Callable
from typing import Any

import pytest

from mlx_router.fabricate import make_tiny_llm

# A manual script (sends an image or PDF to a running server), not a test module.
collect_ignore = ["test_vision_model.py"]


# ---------------------------------------------------------------------------------------------
# Tiny random-weight models (mlx_router/fabricate)
# ---------------------------------------------------------------------------------------------

TINY_MODEL_NAME = "tiny-llama"


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder, shared by the whole session, holding one model: ``tiny-llama``.

    Treat it as read-only; use ``make_tiny_model`` for a model a test may change or delete.
    """
    root = tmp_path_factory.mktemp("models")
    make_tiny_llm(root / TINY_MODEL_NAME)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models_root: Path) -> Path:
    """The folder of the session's ``tiny-llama`` model (default ``make_tiny_llm`` arguments)."""
    return tiny_models_root / TINY_MODEL_NAME


@pytest.fixture
def make_tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_tiny_model(name="tiny-llama", **make_tiny_llm_kwargs) -> Path``.

    Writes ``tmp_path / "models" / name``, so several models made in one test share one models
    folder (``path.parent``), as a router's model directory would.
    """

    def make(name: str = TINY_MODEL_NAME, **kwargs: Any) -> Path:
        return make_tiny_llm(tmp_path / "models" / name, **kwargs)

    return make


# ---------------------------------------------------------------------------------------------
# (end of tiny model fixtures)
# ---------------------------------------------------------------------------------------------
