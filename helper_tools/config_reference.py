#!/usr/bin/env python3
"""Print the config.json reference table (Markdown) from the configuration schema.

``python helper_tools/config_reference.py --write`` refreshes the table in README.md between
its ``config-reference`` markers; without ``--write`` the table goes to standard output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mlx_router.config.settings import Defaults, MediaSettings, ModelConfig, ServerSettings

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("defaults", Defaults),
    ("server", ServerSettings),
    ("media", MediaSettings),
    ("models.<id>", ModelConfig),
]


def _type(annotation: object) -> str:
    text = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    text = text.replace("Optional[Literal[", "Literal[").replace("]]", "] | None").replace("Literal[", "one of [")
    return text.replace("|", "\\|")


def table() -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, model in SECTIONS:
        for name, field in model.model_fields.items():
            default = field.default if field.default is not PydanticUndefined else field.default_factory()  # type: ignore[misc]
            rows.append(f"| `{section}.{name}` | {_type(field.annotation)} | `{json.dumps(default)}` | {field.description} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    if not args.write:
        print(table())
        return 0
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print("README.md has no config-reference markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
