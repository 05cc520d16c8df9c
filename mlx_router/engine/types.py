"""Small, picklable types exchanged between the router and a worker process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Admission",
    "BatchOptions",
    "Constraint",
    "DistributedOptions",
    "EmbeddingRequest",
    "EmbeddingResult",
    "EngineError",
    "EngineErrorKind",
    "FinishReason",
    "GenerationChunk",
    "GenerationParams",
    "GenerationRequest",
    "LoadInfo",
    "RankInfo",
    "TokenLogprob",
    "WorkerMemory",
    "WorkerOptions",
]

FinishReason = Literal["stop", "length", "cancelled"]
EngineErrorKind = Literal[
    "invalid_request", "context_length", "out_of_memory", "internal", "worker_crashed"
]


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling and stopping parameters of one sequence, already resolved against defaults."""

    max_tokens: int
    """Upper bound on generated tokens; the worker lowers it to the context left."""
    temperature: float = 0.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    min_p: float = 0.0
    seed: int | None = None
    """Same seed and same request give the same output."""
    stop: tuple[str, ...] = ()
    """Stop strings; the text from the first match on is not returned."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Additive bias per token id."""
    logprobs: bool = False
    """Report the log-probability of each generated token."""
    top_logprobs: int = 0
    """Also report this many most likely alternatives per position."""
    constraint: Constraint | None = None
    """Constrained decoding: the output must match this grammar."""


@dataclass(frozen=True, slots=True)
class Constraint:
    """What a constrained sequence must produce; the worker builds and caches the grammar."""

    kind: Literal["json", "tools"]
    schema: str | None = None
    """``json``: the JSON schema (as JSON text) of the answer. ``tools``: optionally a schema the
    answer may match instead of calling a tool (``tool_choice: auto`` with a response_format)."""
    tools: tuple[str, ...] = ()
    """``tools``: each callable function as JSON text ``{"name", "parameters"}``."""
    parallel: bool = True
    """``tools``: several calls allowed in one answer."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One sequence to generate. Exactly one of ``messages``, ``prompt`` and ``prompt_ids`` is set."""

    request_id: str
    params: GenerationParams
    messages: tuple[dict[str, Any], ...] | None = None
    """Chat messages, already normalised to what chat templates expect."""
    prompt: str | None = None
    """A raw prompt (completions), tokenized as is."""
    prompt_ids: tuple[int, ...] | None = None
    """A prompt given as token ids (completions)."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    tools: tuple[dict[str, Any], ...] | None = None
    """OpenAI ``tools`` handed to the chat template (None: no tools offered)."""
    tool_format: str | None = None
    """The tool-call format to use instead of the one detected from the template."""
    images: tuple[bytes, ...] = ()
    """PNG images (RGB, already bounded in size) for a vision model, in the order of the image
    placeholders in ``messages``."""


@dataclass(frozen=True, slots=True)
class EngineError:
    """A failure of one request (or of the worker when ``request_id`` is None)."""

    kind: EngineErrorKind
    message: str
    request_id: str | None = None
    param: str | None = None
    """The request parameter at fault, when one is (e.g. ``logit_bias``)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """Sent when the worker has tokenized a request and accepted it, before prefill."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    """max_tokens after bounding by the context left."""
    reasoning_open: bool = False
    """The prompt ends inside a ``<think>`` block (the template opened it)."""
    cached_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache."""
    reasoning_format: Literal["think", "harmony"] = "think"
    """How this model marks reasoning: ``<think>`` tags or gpt-oss harmony channels."""
    tool_format: str | None = None
    """The tool-call format of this sequence's output (set when tools were offered)."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log-probability and the most likely alternatives."""

    token: str
    token_bytes: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()
    """(token, bytes, logprob) of the most likely tokens at this position, best first."""


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """What one decode step produced for one sequence."""

    request_id: str
    text: str
    """New text since the previous chunk (may be empty while a multi-byte character builds)."""
    completion_tokens: int
    """Tokens generated so far for this sequence."""
    prompt_tokens: int
    finish_reason: FinishReason | None = None
    """Set on the last chunk of a sequence."""
    logprobs: tuple[TokenLogprob, ...] = ()
    """Per generated token in this chunk, when the request asked for logprobs."""
    stop_sequence: str | None = None
    """The stop string that ended the sequence, when one did (Anthropic reports it)."""

    def fields(self) -> tuple[Any, ...]:
        """The fields in order, as a plain tuple: what the worker sends (``GenerationChunk(*t)``
        rebuilds it)."""
        return (
            self.request_id, self.text, self.completion_tokens, self.prompt_tokens, self.finish_reason, self.logprobs,
            self.stop_sequence,
        )


@dataclass(frozen=True, slots=True)
class WorkerMemory:
    """MLX's memory in a worker process, as it last reported it (``mx.get_active_memory``,
    ``get_peak_memory``, ``get_cache_memory``): weights, KV caches and the prefix cache are
    active; freed buffers MLX keeps for reuse are its cache."""

    active_bytes: int
    peak_bytes: int
    cache_bytes: int


@dataclass(frozen=True, slots=True)
class LoadInfo:
    """What a worker reports once its model is ready."""

    load_seconds: float
    weight_bytes: int
    """Bytes of the model's weights as MLX holds them (its active memory after load)."""
    context_length: int
    eos_token_ids: tuple[int, ...]
    has_chat_template: bool
    backend: str
    """``cpu``, ``gpu`` (Metal or CUDA)."""
    ranks: tuple[RankInfo, ...] = ()
    """For a model served by a group of ranks: each rank's host and share of the weights
    (``weight_bytes`` is then their sum)."""


@dataclass(frozen=True, slots=True)
class RankInfo:
    """One rank of a group, as it reported itself once its shard was loaded."""

    rank: int
    host: str
    """The host name from the launch configuration (``distributed.hosts``)."""
    hostname: str
    """The machine's own name, as the rank's process sees it."""
    pid: int
    weight_bytes: int
    """MLX active memory of this rank after loading its shard."""
    backend: str


@dataclass(frozen=True, slots=True)
class DistributedOptions:
    """How a model is served by a group of processes (``models.<id>.distributed``)."""

    hosts: tuple[str, ...]
    """One rank per entry, rank 0 first (from ``hosts`` or the hostfile's ``ssh`` names)."""
    backend: Literal["ring", "jaccl", "mpi", "nccl"] = "ring"
    strategy: Literal["pipeline", "tensor"] = "tensor"
    hostfile: str | None = None
    """An ``mlx.launch`` hostfile (JSON) instead of ``hosts``."""
    python: str | None = None
    """The Python on every host (default: the router's own)."""
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment variables for every rank."""
    port: int | None = None
    """ring/jaccl: first port (one per rank); nccl: the coordinator port. None: a free one."""
    router_address: str = "127.0.0.1"
    """The address rank 0 connects back to."""
    step_timeout: float = 120.0
    """A rank that waits this long on one step or on the group's next plan stops the group."""
    connect_timeout: float = 10.0
    """ssh connection timeout of the checks made before a launch."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What a worker process needs to load its model."""

    model_id: str
    model_path: str
    context_length: int | None = None
    """Override of the model's own context window."""
    chat_template: str | None = None
    """A named template, or None / ``auto`` for the tokenizer's own."""
    warmup_tokens: int | None = None
    batch: BatchOptions = field(default_factory=lambda: BatchOptions())
    """Batch and prefix-cache limits."""
    vision: bool = False
    """Load with mlx-vlm (a vision model) instead of mlx-lm."""
    embedding_model: bool = False
    """A dedicated embedding model (BERT, Qwen3-Embedding ...): loaded with mlx-embeddings; it
    serves embedding requests only."""
    distributed: DistributedOptions | None = None
    """Serve the model by a group of ranks (``mlx.launch``) instead of one process."""


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """Limits of one model's batch (configurable in config.json, ``defaults`` and per model)."""

    max_batch_size: int = 32
    """Sequences decoded together; more wait in the worker's queue."""
    prefill_batch_size: int = 8
    """Prompts prefilled together."""
    prefill_step_size: int = 2048
    """Prompt tokens per prefill step (decoding of the others continues between steps)."""
    prefill_buckets: bool | None = None
    """Pad prefill chunks to a few fixed widths, so kernels prepared for one shape serve the next
    prompts (None: on a CUDA GPU only)."""
    prefill_warmup: bool = True
    """With padded widths: prepare every width while the worker is idle after the load."""
    idle_work_delay: float = 0.5
    """Seconds without a request before the worker's background work (preparing prefill widths,
    writing prefix blocks to disk) begins after the load or the last request: a request arriving
    meanwhile is admitted at once instead of waiting for the piece of work in progress."""
    buffer_cache_bytes: int | None = None
    """Bytes of freed MLX buffers kept for reuse after a prompt chunk (0: MLX's buffer cache is
    emptied after every prefill chunk, as mlx-lm does; None: 2 GiB on a CUDA GPU, else 0)."""
    prefix_cache_bytes: int = 1 << 30
    """Bytes of KV kept for reuse across requests (0 turns the prefix cache off)."""
    prefix_cache_entries: int = 64
    """Cached sequences kept, for models whose KV cannot be cut into blocks (sliding windows)."""
    prefix_cache_block_tokens: int = 64
    """Tokens per cached block: the shortest prefix that is reused, and the reuse granularity."""
    prefix_cache_directory: str | None = None
    """Folder of the disk tier of the prefix cache (None: no disk tier)."""
    prefix_cache_disk_bytes: int = 0
    """Bytes of KV blocks the disk tier keeps for this model (0: no disk tier)."""
    prefix_cache_flush_seconds: float = 3.0
    """Seconds spent at exit writing the blocks the disk tier has not written yet."""
    grammar_cache_entries: int = 64
    """Compiled output grammars (response_format schemas, forced tool calls) kept for reuse."""


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Inputs to embed in one request (``("embed", EmbeddingRequest)``); the worker answers with
    one :class:`EmbeddingResult` or an :class:`EngineError`."""

    request_id: str
    inputs: tuple[str | tuple[int, ...], ...]
    """Texts, or token ids used as they are (no special tokens added)."""
    max_input_tokens: int
    """Longest input in tokens; the model's context bounds it too. Longer: invalid_request."""
    batch_tokens: int
    """Padded tokens (rows x longest row) per forward pass."""
    max_total_tokens: int = 1 << 62
    """Most tokens of all inputs together. More: invalid_request."""
    pooling: Literal["mean", "last", "cls"] | None = None
    """How hidden states become one vector; None: the model's own (see ``engine/embed.py``)."""
    dimensions: int | None = None
    """Keep the first ``dimensions`` values and renormalize (None: the whole vector)."""
    shortening: bool = False
    """Whether ``dimensions`` may be smaller than the model's output (a Matryoshka model)."""


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """The vectors of one :class:`EmbeddingRequest`, in input order."""

    request_id: str
    vectors: tuple[bytes, ...]
    """Each vector as little-endian float32 bytes, L2-normalized."""
    prompt_tokens: int
    """Tokens of all inputs together (special tokens included, padding not)."""
