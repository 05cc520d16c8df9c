"""The README stays true to the code: every config key and CLI flag is documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mlx_router.cli import build_parser
from mlx_router.config.settings import Defaults, MediaSettings, ModelConfig, ServerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("defaults", Defaults),
    ("server", ServerSettings),
    ("media", MediaSettings),
    ("models.<id>", ModelConfig),
]


@pytest.mark.parametrize(
    ("key", "default"),
    [
        (f"{section}.{name}", field.default if field.default is not PydanticUndefined else field.default_factory())  # type: ignore[misc]
        for section, model in SECTIONS
        for name, field in model.model_fields.items()
    ],
)
def test_config_key_is_in_reference_table(key: str, default: object) -> None:
    row = next((line for line in README.splitlines() if line.startswith(f"| `{key}` |")), None)
    assert row is not None, f"README config reference lacks {key}"
    assert f"`{json.dumps(default)}`" in row, f"README shows a wrong default for {key}"


def test_reference_table_has_no_stale_keys() -> None:
    documented = {
        line.split("`")[1] for line in README.splitlines() if line.startswith("| `") and "." in line.split("`")[1]
    }
    known = {f"{section}.{name}" for section, model in SECTIONS for name in model.model_fields}
    stale = {key for key in documented if key.split(".")[0] in ("defaults", "server", "media", "models") and key not in known}
    assert not stale


def test_every_cli_flag_is_documented() -> None:
    for action in build_parser()._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}`" in README, flag


def test_reference_table_is_current() -> None:
    """README's table is exactly what helper_tools/config_reference.py prints (run it with --write)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "helper_tools" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.table() in README
