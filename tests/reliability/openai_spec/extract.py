"""Cut the official OpenAI OpenAPI document down to the operations mlx-router serves.

Usage: python tests/reliability/openai_spec/extract.py PATH/TO/openapi.json [-o openapi.json]

Keeps ``POST /chat/completions``, ``POST /completions``, ``GET /models`` and
``GET /models/{model}`` with every component they reference, unchanged, with two additions that
the reliability suite's schemathesis run needs (README.md beside this file says why):

* ``servers`` is dropped: the run supplies the server's URL;
* each operation gets a ``4XX`` response with the ``ErrorResponse`` envelope, which the OpenAI
  API sends for invalid requests but the document does not list.

Deterministic: the same spec gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["OPERATIONS", "extract", "main"]

OPERATIONS = (("/chat/completions", "post"), ("/completions", "post"), ("/models", "get"), ("/models/{model}", "get"))
REF_PREFIX = "#/components/schemas/"
DEFAULT_OUTPUT = Path(__file__).with_name("openapi.json")


def _refs(node: Any) -> set[str]:
    """Every ``#/components/<section>/<name>`` reference below ``node``, as ``section/name``."""
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix("#/components/")} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


def extract(spec: dict[str, Any], source_sha256: str) -> dict[str, Any]:
    """The served operations of ``spec`` and the component schemas they reach."""
    paths: dict[str, Any] = {}
    for path, method in OPERATIONS:
        operation = json.loads(json.dumps(spec["paths"][path][method]))
        operation["responses"]["4XX"] = {
            "description": "The request was refused (the OpenAI error envelope).",
            "content": {"application/json": {"schema": {"$ref": REF_PREFIX + "ErrorResponse"}}},
        }
        paths.setdefault(path, {})[method] = operation
    wanted: set[str] = set()
    todo = _refs(paths)
    while todo:
        ref = todo.pop()
        if ref in wanted:
            continue
        wanted.add(ref)
        section, name = ref.split("/", 1)
        todo |= _refs(spec["components"][section][name]) - wanted
    components: dict[str, dict[str, Any]] = {}
    for ref in sorted(wanted):
        section, name = ref.split("/", 1)
        components.setdefault(section, {})[name] = spec["components"][section][name]
    return {
        "openapi": spec["openapi"],
        "info": {**spec["info"], "x-source-sha256": source_sha256},
        "paths": paths,
        "components": components,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="the official openapi.json")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    raw = args.spec.read_bytes()
    subset = extract(json.loads(raw), hashlib.sha256(raw).hexdigest())
    args.output.write_text(json.dumps(subset, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{args.output}: {len(subset['paths'])} paths, {sum(map(len, subset['components'].values()))} components")
    return 0


if __name__ == "__main__":
    sys.exit(main())
