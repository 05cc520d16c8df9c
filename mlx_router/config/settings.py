"""The configuration schema and its loader.

``config.json`` keeps the old project's shape (``defaults``, ``server``, ``models``) so existing
files keep working. Precedence, lowest first: built-in defaults, the file, ``MLX_ROUTER_*``
environment variables (and ``MLX_MODEL_DIR``), then CLI flags. Every problem is reported as a
:class:`ConfigError` whose message names the key, the problem and the fix; unknown keys are
errors with a "did you mean" suggestion, because a typo that is silently ignored is a setting
the operator believes in and does not have.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlx_router.config.distributed import DistributedConfig

__all__ = [
    "CHAT_TEMPLATE_NAMES",
    "PRESSURE_LEVELS",
    "ConfigError",
    "Defaults",
    "MediaSettings",
    "ModelConfig",
    "ServerSettings",
    "Settings",
    "load_settings",
]

logger = logging.getLogger(__name__)

CHAT_TEMPLATE_NAMES = ("auto", "llama3", "deepseek", "qwen", "phi4", "chatml", "gpt-oss", "generic")
PRESSURE_LEVELS = ("normal", "moderate", "high", "critical")
ENV_PREFIX = "MLX_ROUTER_"
SECRET_KEYS = frozenset({"api_key"})
"""Keys whose values are never echoed in error messages."""


class ConfigError(Exception):
    """A configuration problem, phrased for the operator (no traceback is shown)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Per-model settings (``models.<id>`` in config.json); every key is optional."""

    path: str | None = Field(
        None,
        description="Model folder or .gguf file; relative paths are under model_directory. "
        "Default: the folder named like the model id under model_directory.",
    )
    max_tokens: int | None = Field(None, ge=1, description="Default max_tokens for this model.")
    temp: float | None = Field(None, ge=0.0, le=2.0, description="Default temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Default nucleus sampling p.")
    top_k: int | None = Field(None, ge=0, description="Default top-k (0 = off).")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Default min-p (0 = off).")
    chat_template: str | None = Field(
        None,
        description="'auto' (the tokenizer's own template) or a named template: "
        + ", ".join(CHAT_TEMPLATE_NAMES[1:]),
    )
    context_length: int | None = Field(
        None, ge=16, description="Context window; default from the model's config.json."
    )
    required_memory_gb: float | None = Field(
        None, gt=0, description="Memory the model needs; default measured from its weight files."
    )
    supports_tools: bool | None = Field(
        None,
        description="False refuses chat requests with tools (Messages and Responses drop them with a warning); "
        "default: whether its chat template renders tools. "
        "True for a template that cannot render them: the server describes the tools itself (Hermes style).",
    )
    tool_parser: str | None = Field(
        None,
        description="Tool-call format of the model's output (hermes, qwen3_coder, llama3_json, mistral, "
        "deepseek, harmony, glm, gemma, function_gemma, pythonic); default from its chat template.",
    )
    supports_vision: bool | None = Field(
        None, description="Whether the model reads images; default from its config."
    )
    reasoning_response: Literal["enable", "disable"] | None = Field(
        None,
        description="'enable' returns reasoning separately, 'disable' drops it; "
        "Messages thinking and Responses reasoning requests decide for themselves.",
    )
    embedding_model: bool | None = Field(
        None,
        description="True: a dedicated embedding model, loaded with mlx-embeddings (serves /v1/embeddings only); "
        "default from its config.json (architectures, model_type, sentence-transformers files).",
    )
    supports_embeddings: bool | None = Field(
        None, description="False refuses /v1/embeddings for this model; default: true for text and embedding models."
    )
    embedding_pooling: Literal["mean", "last", "cls"] | None = Field(
        None,
        description="How hidden states become one embedding: 'mean', 'last' (last token) or 'cls' (first token); "
        "default: the checkpoint's 1_Pooling/config.json, else the embedding model's own, else 'mean'.",
    )
    embedding_dimensions: list[int] | Literal["any"] | None = Field(
        None,
        description="Shorter embeddings the model was trained for (Matryoshka), allowed as 'dimensions': a list of "
        "sizes or 'any'; default: known for Qwen3-Embedding ('any') and EmbeddingGemma, else the full size only.",
    )
    pin: bool = Field(False, description="Never unload this model to make room (and load it at start).")
    preload: bool = Field(False, description="Load this model at start.")
    keep_alive: float | None = Field(None, ge=0, description="Overrides defaults.keep_alive for this model.")
    max_batch_size: int | None = Field(None, ge=1, le=1024, description="Overrides defaults.max_batch_size.")
    max_queue: int | None = Field(None, ge=0, le=100_000, description="Overrides defaults.max_queue.")
    prefix_cache_bytes: int | None = Field(None, ge=0, description="Overrides defaults.prefix_cache_bytes.")
    memory_pressure_max_tokens: dict[str, int] | None = Field(
        None, description="Cap on max_tokens per memory-pressure level (normal/moderate/high/critical)."
    )
    distributed: DistributedConfig | None = Field(
        None,
        description="Serve this model by a group of ranks on several hosts or GPUs: hosts or hostfile, backend, strategy, … "
        "(README, One model on several machines).",
    )

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is not None and value not in CHAT_TEMPLATE_NAMES:
            raise ValueError(
                f"unknown chat template {value!r}; use one of: {', '.join(CHAT_TEMPLATE_NAMES)}"
            )
        return value

    @field_validator("tool_parser")
    @classmethod
    def _known_tool_parser(cls, value: str | None) -> str | None:
        from mlx_router.text.tools import FORMATS

        if value is not None and value not in FORMATS:
            raise ValueError(f"unknown tool parser {value!r}; use one of: {', '.join(sorted(FORMATS))}")
        return value

    @field_validator("embedding_dimensions")
    @classmethod
    def _positive_sizes(cls, value: list[int] | str | None) -> list[int] | str | None:
        if isinstance(value, list) and (not value or any(size < 1 for size in value)):
            raise ValueError("list the allowed embedding sizes as positive integers, or write 'any'")
        return value

    @field_validator("memory_pressure_max_tokens")
    @classmethod
    def _known_levels(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for level, tokens in (value or {}).items():
            if level not in PRESSURE_LEVELS:
                raise ValueError(
                    f"unknown pressure level {level!r}; use {', '.join(PRESSURE_LEVELS)}"
                )
            if tokens < 1:
                raise ValueError(f"{level}: token cap must be at least 1")
        return value


class Defaults(_Section):
    """Global defaults (``defaults`` in config.json)."""

    model: str | None = Field(
        None,
        description="Model preloaded at start and kept resident: evicted only after every other idle model "
        "when a load needs its room (models.<id>.pin: true never evicts it).",
    )
    model_directory: str = Field(
        "~/models", description="Where models are discovered; MLX_MODEL_DIR overrides it."
    )
    max_tokens: int = Field(4096, ge=1, le=1_048_576, description="Default max_tokens.")
    max_tokens_limit: int = Field(
        131_072, ge=1, le=1_048_576, description="Largest max_tokens a request may ask for."
    )
    max_n: int = Field(16, ge=1, le=128, description="Most choices (n) one request may ask for.")
    timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a non-streaming request may run; then it returns what it generated "
        '(finish_reason "length", header X-MLX-Router-Stopped: timeout). Streams have no wall-clock limit.',
    )
    cache_size: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Most models resident at once; null: no count cap, the memory budget alone decides.",
    )
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="Memory all resident models may use together (weights + KV allowance); default "
        "75% of the GPU memory (NVIDIA) or of the system memory.",
    )
    kv_allowance_tokens: int = Field(
        32768, ge=0, description="Tokens of KV cache counted per resident model in its memory cost."
    )
    swap_wait: float = Field(
        60.0, ge=0, le=3600, description="Seconds a request may wait for busy models to give way to its model; then 503."
    )
    keep_alive: float = Field(
        0, ge=0, description="Seconds an idle model stays loaded (0: until evicted); pinned models stay."
    )
    rescan_interval: float = Field(
        10.0,
        ge=0,
        description="Least seconds between model-directory rescans triggered by unknown model ids or by "
        "GET /v1/models; a listing also rescans at once when the directory's top level changed.",
    )
    memory_threshold_gb: float = Field(
        2.0, ge=0, description="Available memory below which pressure is 'high' (half: 'critical')."
    )
    safety_margin: float = Field(
        0.9, gt=0, le=1.0, description="Fraction of available memory a model load may use."
    )
    swap_critical_percent: float = Field(
        99.0, ge=0, le=100, description="Swap use (%) that, with low memory, means 'critical'."
    )
    swap_high_percent: float = Field(
        90.0, ge=0, le=100, description="Swap use (%) that, with low memory, means 'high'."
    )
    stream: bool = Field(False, description="Stream when a request does not say.")
    stream_chunk_size: int | None = Field(
        None,
        ge=1,
        description="Obsolete: tokens are streamed as they are produced. Accepted so old "
        "files load; a warning is logged.",
    )
    streaming_format: Literal["sse", "json_lines", "json_array"] = Field(
        "sse", description="Wire format of streamed responses."
    )
    spare_worker: bool = Field(
        True,
        description="Keep one worker process started, with MLX imported, so a model load does not also "
        "pay for starting Python and importing MLX.",
    )
    worker_pytorch: bool = Field(
        False,
        description="Let model workers (and GGUF imports) import an installed PyTorch. Off, they hide it from transformers "
        "(which would import it, though MLX never uses it: a worker's load took 2-3 s and 500 MB more); "
        "tokenizers and image processors then take the paths they take on a host without PyTorch. Turn "
        "on only for a tokenizer or processor that needs PyTorch.",
    )
    warmup_tokens: int | None = Field(
        None,
        ge=0,
        le=256,
        description="Tokens generated for a short chat message right after a load, before the model is "
        "ready, to prepare its kernels and chat template. null: 4 on a CUDA GPU (Linux), where a fresh "
        "process's first request would otherwise prepare them, else 0.",
    )
    max_batch_size: int = Field(
        32, ge=1, le=1024, description="Requests per model decoded together (continuous batching)."
    )
    max_queue: int = Field(
        64, ge=0, le=100_000, description="Requests per model waiting beyond max_batch_size; more get 429."
    )
    prefill_batch_size: int = Field(8, ge=1, le=256, description="Prompts per model prefilled together.")
    prefill_step_size: int = Field(
        2048, ge=16, le=65536, description="Prompt tokens per prefill step; decoding continues between steps."
    )
    prefill_buckets: bool | None = Field(
        None, description="Pad prompt chunks to about 30 fixed lengths (at most a quarter is padding) and prepare "
        "them while the model is idle after its load, so new prompt lengths cost no kernel preparation; null: on "
        "a CUDA GPU only."
    )
    idle_work_delay: float = Field(
        0.5, ge=0, le=3600, description="Seconds a model's worker waits without requests, after its load or its "
        "last request, before background work (preparing prompt widths, writing prefix blocks to disk), so that "
        "a request arriving meanwhile (the one that caused the load, an agent's next turn) is not kept waiting "
        "for a piece of that work."
    )
    buffer_cache_bytes: int | None = Field(
        None, ge=0, le=1 << 40, description="Bytes of freed MLX buffers a model's worker keeps for reuse instead of "
        "emptying MLX's buffer cache after every prompt chunk, as mlx-lm does (0: emptied). On a CUDA GPU every "
        "buffer given back must be allocated again (cudaMallocManaged, then page faults on first use), which new "
        "prompts and cache hits paid; null: 2 GiB on a CUDA GPU, 0 elsewhere."
    )
    prefix_cache_bytes: int | None = Field(
        None,
        ge=0,
        description="Bytes of KV kept per model for reuse across requests (0: off); null: the KV of "
        "kv_allowance_tokens tokens of that model (bounded by its context), at most 1/16 of the memory budget.",
    )
    prefix_cache_entries: int = Field(
        64, ge=1, le=100_000, description="Cached prefixes kept per model whose KV cannot be cut into blocks "
        "(sliding-window and state-space layers)."
    )
    prefix_cache_block_tokens: int = Field(
        64, ge=8, le=4096, description="Tokens per block of the prefix cache: the shortest prefix reused, and the "
        "granularity of reuse."
    )
    prefix_cache_disk_bytes: int = Field(
        10 << 30, ge=0, description="Bytes of KV blocks kept on disk per model, so that long prefixes survive an "
        "eviction, a model swap and a restart (0: no disk tier)."
    )
    prefix_cache_flush_seconds: float = Field(
        3.0, ge=0, le=600, description="Seconds a model's worker spends, when it is unloaded or the server stops, "
        "writing the prefix blocks its disk tier has not written yet (the rest are not kept); an unload or a "
        "stop waits that much longer for the worker."
    )
    prefix_cache_directory: str | None = Field(
        None, description="Where the disk tier of the prefix cache keeps its blocks (one folder per model identity); "
        "null: prefix-cache/ in server.data_directory."
    )
    enable_function_calling: bool = Field(
        True, description="False refuses chat requests that carry tools (Messages and Responses drop them with a warning)."
    )
    max_tools: int = Field(128, ge=1, le=4096, description="Most tools one request may offer.")
    grammar_cache_entries: int = Field(
        64, ge=1, le=10_000, description="Compiled output grammars (JSON schemas, forced tool calls) kept per model."
    )
    max_schema_depth: int = Field(
        32, ge=2, le=256, description="Deepest nesting allowed in a response_format schema or a tool's parameters."
    )
    max_schema_bytes: int = Field(
        65536, ge=256, description="Largest response_format schema or tool parameters schema, as JSON bytes."
    )
    embedding_max_inputs: int = Field(
        2048, ge=1, le=100_000, description="Most inputs one /v1/embeddings request may carry."
    )
    embedding_max_input_tokens: int = Field(
        8192, ge=1, le=1_048_576, description="Most tokens per embedding input (the model's context bounds it too)."
    )
    embedding_max_request_tokens: int = Field(
        300_000, ge=1, le=100_000_000, description="Most tokens of all inputs of one embedding request together."
    )
    embedding_batch_tokens: int = Field(
        8192,
        ge=16,
        le=1_048_576,
        description="Padded tokens (inputs x longest input) per embedding forward pass; more inputs run in "
        "several passes, between which generation goes on.",
    )
    embedded_model: bool = Field(
        True,
        description="Import and serve the bundled SmolLM2-135M-Instruct when no model is "
        "configured or discovered.",
    )


class ServerSettings(_Section):
    """Network, security and logging (``server`` in config.json)."""

    ip: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8800, ge=1, le=65535, description="Port to bind.")
    debug: bool = Field(False, description="Debug logging.")
    api_key: str | None = Field(None, description="Bearer token clients must send.")
    api_key_file: str | None = Field(None, description="File whose first line is the API key.")
    allow_unauthenticated: bool = Field(
        False, description="Allow a non-loopback bind without an API key."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty turns CORS off."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers accepted; empty means loopback names when bound to loopback, "
        "any host otherwise.",
    )
    max_request_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body; larger gets 413."
    )
    data_directory: str = Field(
        "data",
        description="Where the server keeps what it writes besides logs: stored Responses (responses.sqlite3) and "
        "the prefix cache's disk tier (prefix-cache/); a relative path is under the working directory, like log_file.",
    )
    log_file: str | None = Field(
        "logs/mlx_router.log", description="Rotating log file; null logs to the console only."
    )
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Log rotation size.")
    log_backup_count: int = Field(5, ge=0, description="Rotated log files kept.")
    sse_keepalive_seconds: float = Field(
        10.0, gt=0, le=300, description="Idle seconds after which a stream gets a ': keep-alive' comment (SSE)."
    )
    drain_timeout: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM: seconds running requests may finish before they are ended."
    )
    worker_start_timeout: float = Field(
        600.0, gt=0, description="Seconds a model load may take before it is failed."
    )
    metrics_public: bool = Field(
        False, description="Serve GET /metrics without the API key (for a Prometheus that cannot send one)."
    )
    status_history_seconds: int = Field(
        600, ge=10, le=86400, description="Seconds of per-10-second request and token counts kept for the status page."
    )
    status_errors_kept: int = Field(
        20, ge=0, le=1000, description="Most recent errors kept for the status page (message, status, model, time)."
    )
    responses_store_path: str | None = Field(
        None,
        description="SQLite file of stored /v1/responses responses (previous_response_id); null: "
        "responses.sqlite3 in server.data_directory.",
    )
    responses_store_max: int = Field(
        10000, ge=1, description="Most stored responses kept; the oldest go first."
    )
    responses_store_max_age_hours: float = Field(
        720.0, gt=0, description="Hours a stored response is kept (30 days by default)."
    )


class MediaSettings(_Section):
    """Images and PDFs in requests (``media`` in config.json): every limit that keeps a hostile
    upload from costing memory or time, and whether image URLs may be fetched at all."""

    allow_remote_urls: bool = Field(
        False,
        description="Fetch http(s) image URLs; off: only data: URIs are accepted. Fetches never reach "
        "loopback, private, link-local, multicast or reserved addresses.",
    )
    remote_allowed_networks: list[str] = Field(
        default_factory=list,
        description="IP networks (CIDR, e.g. 192.168.1.0/24) that image fetches may reach although "
        "they are not public, such as an image server on your LAN.",
    )
    remote_connect_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds an image fetch may take to connect."
    )
    remote_timeout: float = Field(
        15.0, gt=0, le=600, description="Seconds an image fetch may take in all, redirects included."
    )
    remote_max_redirects: int = Field(
        3, ge=0, le=20, description="Redirects an image fetch follows; each hop's address is checked again."
    )
    max_images_per_request: int = Field(
        32, ge=1, le=1024, description="Images one request may carry; each rendered PDF page counts as one."
    )
    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest image, in bytes after base64 decoding (or as downloaded)."
    )
    max_image_pixels: int = Field(
        50_000_000,
        ge=1024,
        description="Largest image in pixels (width x height, read from its header before decoding); "
        "larger gets 413. Also Pillow's decompression-bomb limit.",
    )
    resize_max_side: int = Field(
        2048, ge=16, le=16384, description="Images (and PDF pages) are scaled down so neither side exceeds this."
    )
    resize_max_pixels: int = Field(
        4_194_304, ge=256, description="Images (and PDF pages) are scaled down to at most this many pixels."
    )
    max_concurrent_decodes: int = Field(
        2, ge=1, le=64, description="Images or PDFs decoded or rendered at once, server-wide: bounds their "
        "peak memory (each full-size image in memory while it is scaled down)."
    )
    low_detail_max_side: int = Field(
        512, ge=16, le=16384, description="An image_url with detail 'low' is scaled down so neither side exceeds this."
    )
    max_pdf_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest PDF, in bytes after base64 decoding (or as downloaded)."
    )
    max_pdf_pages: int = Field(
        20, ge=1, le=1000, description="Pages rendered per PDF (the first ones); the response's warnings say so."
    )
    pdf_dpi: int = Field(
        150, ge=36, le=600, description="Render resolution of PDF pages; lowered for large pages to respect resize_max_*."
    )
    pdf_render_timeout: float = Field(
        10.0, gt=0, le=600, description="Seconds one PDF may take to inspect and render; poppler is then killed."
    )
    poppler_path: str | None = Field(
        None,
        description="Folder holding poppler's pdfinfo and pdftoppm when they are not on PATH "
        "(e.g. /opt/homebrew/bin under launchd).",
    )

    @field_validator("remote_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP network; write it like 192.168.1.0/24 or fd00::/8") from None
        return value


class Settings(_Section):
    """The whole configuration."""

    defaults: Defaults = Field(default_factory=Defaults)
    server: ServerSettings = Field(default_factory=ServerSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Other names for served models, for every endpoint: an exact name or a glob pattern "
        "(claude-*) mapped to a served model id.",
    )

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if not name or len(name) > 256 or any(ord(c) < 32 for c in name) or name.strip() != name:
                raise ValueError(f"{name!r} is not a usable model name (1-256 printable characters, no surrounding spaces)")
            if not target:
                raise ValueError(f"{name}: the target must name a served model id")
        return value

    @property
    def responses_store_file(self) -> Path:
        """The SQLite file of stored Responses (configured, or in the data directory)."""
        configured = self.server.responses_store_path
        return Path(configured).expanduser() if configured else self._data_dir / "responses.sqlite3"

    @property
    def prefix_cache_dir(self) -> Path:
        """The folder of the prefix cache's disk tier (configured, or in the data directory)."""
        configured = self.defaults.prefix_cache_directory
        return Path(configured).expanduser() if configured else self._data_dir / "prefix-cache"

    @property
    def _data_dir(self) -> Path:
        return Path(self.server.data_directory).expanduser()

    @property
    def model_dir(self) -> Path:
        """The resolved model directory."""
        return Path(self.defaults.model_directory).expanduser()

    def resolve_api_key(self) -> str | None:
        """The API key from ``api_key`` or ``api_key_file`` (config or environment)."""
        if self.server.api_key:
            return self.server.api_key
        if self.server.api_key_file:
            path = Path(self.server.api_key_file).expanduser()
            try:
                key = path.read_text(encoding="utf-8").splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ConfigError(
                    f"server.api_key_file: cannot read a key from {path} ({exc.__class__.__name__}); "
                    "put the key on the file's first line or set server.api_key"
                ) from None
            if not key:
                raise ConfigError(f"server.api_key_file: {path} is empty; put the key on its first line")
            return key
        return None


# --------------------------------------------------------------------------------------------
# Loading


def _suggest(name: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else f" Known keys: {', '.join(sorted(choices))}."


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Known keys of the section a validation error location points into."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if model is Settings and part == "models":
            model = ModelConfig
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            continue
        annotation = field.annotation
        annotation = next((a for a in get_args(annotation) if a is not type(None)), annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return list(model.model_fields)


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"Invalid configuration in {source}:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            hint = _suggest(str(loc[-1]), _fields_at(loc))
            lines.append(f"  - {key}: unknown key.{hint} Remove or rename it.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = err.get("input")
            secret = any(str(part) in SECRET_KEYS for part in loc)
            value = "" if secret or isinstance(shown, (dict, list)) else f" (got {shown!r})"
            lines.append(f"  - {key}: {msg}{value}. Fix the value in {source}.")
    return "\n".join(lines)


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``MLX_ROUTER_SERVER_PORT=9000`` → ``{"server": {"port": 9000}}`` and so on.

    ``MLX_ROUTER_API_KEY`` and ``MLX_ROUTER_API_KEY_FILE`` are shorthands for the server keys;
    ``MLX_MODEL_DIR`` overrides ``defaults.model_directory``.
    """
    out: dict[str, dict[str, Any]] = {"defaults": {}, "server": {}, "media": {}}
    sections: dict[str, tuple[str, type[BaseModel]]] = {
        "SERVER_": ("server", ServerSettings),
        "DEFAULTS_": ("defaults", Defaults),
        "MEDIA_": ("media", MediaSettings),
    }
    known = [f"{ENV_PREFIX}API_KEY", f"{ENV_PREFIX}API_KEY_FILE"] + [
        f"{ENV_PREFIX}{prefix}{name.upper()}"
        for prefix, (_, model) in sections.items()
        for name in model.model_fields
    ]
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name in (f"{ENV_PREFIX}API_KEY", f"{ENV_PREFIX}API_KEY_FILE"):
            out["server"][name.removeprefix(ENV_PREFIX).lower()] = raw
            continue
        rest = name.removeprefix(ENV_PREFIX)
        for prefix, (section, model) in sections.items():
            key = rest.removeprefix(prefix).lower()
            if rest.startswith(prefix) and key in model.model_fields:
                out[section][key] = raw if _accepts_str(model.model_fields[key].annotation) else _parse_env_value(raw)
                break
        else:
            match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" Did you mean {match[0]}?" if match else ""
            raise ConfigError(
                f"Unknown environment variable {name}.{hint} Unset it or use one of the "
                f"documented MLX_ROUTER_* names."
            )
    if environ.get("MLX_MODEL_DIR"):
        out["defaults"]["model_directory"] = environ["MLX_MODEL_DIR"]
    return out


def _accepts_str(annotation: Any) -> bool:
    """Whether a field takes strings (then an env value is kept verbatim, digits included)."""
    if annotation is str:
        return True
    return get_origin(annotation) in (Union, types.UnionType) and str in get_args(annotation)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse ``config.json`` into a dict, with operator-friendly errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist. Pass --config with an existing file.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"Config file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}. Check commas and quotes there."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a JSON object with defaults/server/models.")
    return data


def load_settings(
    config_path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build :class:`Settings` from file, environment and CLI overrides (in that order)."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = read_config_file(config_path) if config_path else {}
    source = str(config_path) if config_path else "the built-in defaults"
    try:
        Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    data = _merge(data, _env_overrides(environ))
    data = _merge(data, overrides or {})
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, "the environment or command line")) from None
    if settings.defaults.stream_chunk_size is not None:
        logger.warning(
            "defaults.stream_chunk_size is obsolete and has no effect: tokens are streamed as "
            "the model produces them. Remove the key to silence this warning."
        )
    return settings
