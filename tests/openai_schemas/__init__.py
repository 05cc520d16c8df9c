"""Validate server responses against the official OpenAI schemas (see README.md).

    from tests.openai_schemas import validate
    validate(response.json(), "CreateChatCompletionResponse")

``validate`` raises ``jsonschema.ValidationError`` whose message names the schema, the JSON path
of the offending value and what is wrong with it (the full jsonschema error is its ``__cause__``).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["SCHEMAS_URI", "schema_names", "schemas", "validate", "validator_for"]

SCHEMAS_FILE = Path(__file__).with_name("schemas.json")
SCHEMAS_URI = "urn:openai-openapi:schemas"

# Not an OpenAI schema: streamed /v1/completions chunks reuse CreateCompletionResponse, whose
# choices declare a non-null finish_reason, yet OpenAI sends null until the last chunk. This
# derived schema allows null there and nothing else.
COMPLETION_CHUNK = "CreateCompletionStreamResponse"


@functools.cache
def _document() -> dict[str, Any]:
    document = json.loads(SCHEMAS_FILE.read_text(encoding="utf-8"))
    schemas = document["components"]["schemas"]
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish_reason = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    finish_reason["type"] = [finish_reason["type"], "null"]
    finish_reason["enum"] = [*finish_reason["enum"], None]
    schemas[COMPLETION_CHUNK] = chunk
    return document


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(_document(), default_specification=DRAFT202012)
    return Registry().with_resource(SCHEMAS_URI, resource)


def schemas() -> dict[str, Any]:
    """Every schema by name (``$ref`` values point into this mapping, ``#/components/schemas/NAME``)."""
    return _document()["components"]["schemas"]  # type: ignore[no-any-return]


def schema_names() -> list[str]:
    """The names ``validate`` accepts."""
    return sorted(_document()["components"]["schemas"])


@functools.cache
def validator_for(schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema; ``$ref``s resolve within schemas.json."""
    if schema_name not in _document()["components"]["schemas"]:
        raise KeyError(f"unknown schema {schema_name!r}; known: {', '.join(schema_names())}")
    schema = {"$ref": f"{SCHEMAS_URI}#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def validate(instance: Any, schema_name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches ``schema_name``."""
    errors = list(validator_for(schema_name).iter_errors(instance))
    if not errors:
        return
    best = best_match(errors)
    # best_match may pick a sub-error of an anyOf/oneOf failure: do not repeat its parents.
    shown = {id(best)}
    parent = best.parent
    while parent is not None:
        shown.add(id(parent))
        parent = parent.parent
    others = [f"  also {_describe(e)}" for e in errors if id(e) not in shown]
    lines = [f"{schema_name} {_describe(best)}", *others[:10]]
    raise jsonschema.ValidationError(
        "\n".join(lines), path=best.path, schema_path=best.schema_path
    ) from best


def _describe(error: jsonschema.ValidationError) -> str:
    message = error.message
    if len(message) > 300:
        message = message[:300] + "..."
    return f"at {error.json_path}: {message}"
