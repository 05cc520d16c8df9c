"""Extract the OpenAI response schemas that the tests validate against.

Usage: python tests/openai_schemas/extract.py PATH/TO/openapi.json [-o schemas.json]

Reads the official OpenAI OpenAPI spec (JSON, or YAML when PyYAML is installed), keeps the
component schemas named in ROOTS and everything they reference, and writes them as plain JSON
Schema (draft 2020-12) under ``components/schemas``:

* OpenAPI 3.0's ``nullable: true`` becomes a union with ``null`` (``type: [T, "null"]``, ``null``
  added to an ``enum``, or ``anyOf: [schema, {"type": "null"}]`` around a ``$ref``);
* ``x-*`` extensions, OpenAPI-only keywords (``discriminator``, ``example``) and documentation
  (``description``, ``title``) are dropped to keep the file small.

The output is deterministic (sorted keys), so regenerating from the same spec changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["ROOTS", "extract", "main", "to_json_schema"]

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "CompletionUsage",
    "CreateChatCompletionRequest",
    "CreateCompletionRequest",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "TokenCountsResource",
)

REF_PREFIX = "#/components/schemas/"
DROPPED_KEYWORDS = frozenset({"description", "title", "example", "examples", "discriminator"})
# Keywords whose value maps property names to schemas: their keys are names, not keywords.
NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})

DEFAULT_OUTPUT = Path(__file__).with_name("schemas.json")


def to_json_schema(node: Any) -> Any:
    """Return ``node`` as JSON Schema 2020-12: nullable unions made explicit, noise dropped."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-") or key in DROPPED_KEYWORDS or key == "nullable":
            continue
        if key in NAME_MAPS and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = to_json_schema(value)
    if node.get("nullable") is True:
        out = _make_nullable(out)
    return out


def _make_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if kind is None or "$ref" in schema or "anyOf" in schema or "oneOf" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    schema = dict(schema)
    kinds = kind if isinstance(kind, list) else [kind]
    if "null" not in kinds:
        schema["type"] = [*kinds, "null"]
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                if not value.startswith(REF_PREFIX):
                    raise ValueError(f"unsupported $ref {value!r}")
                found.add(value[len(REF_PREFIX) :])
            elif not key.startswith("x-"):
                found |= _refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _refs(item)
    return found


def extract(spec: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    """Return ``{name: schema}`` for ``roots`` and their transitive ``$ref`` closure."""
    available = spec["components"]["schemas"]
    picked: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in picked:
            continue
        if name not in available:
            raise KeyError(f"schema {name!r} is not in the spec")
        picked[name] = to_json_schema(available[name])
        pending.extend(_refs(picked[name]) - picked.keys())
    return dict(sorted(picked.items()))


def _load_spec(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in {".yaml", ".yml"}:
        import yaml  # only needed for the YAML flavour of the spec

        return yaml.safe_load(text)
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="OpenAI openapi.json (or .yaml)")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    spec = _load_spec(args.spec)
    schemas = extract(spec)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            "Generated by tests/openai_schemas/extract.py from the OpenAI OpenAPI spec "
            "(MIT, see LICENSE). Do not edit by hand."
        ),
        "x-source": {
            "title": spec.get("info", {}).get("title"),
            "version": spec.get("info", {}).get("version"),
            "openapi": spec.get("openapi"),
            "sha256": hashlib.sha256(args.spec.read_bytes()).hexdigest(),
            "roots": list(ROOTS),
        },
        "components": {"schemas": schemas},
    }
    args.output.write_text(
        json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    print(f"wrote {len(schemas)} schemas to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
