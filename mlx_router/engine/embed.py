"""Embeddings inside a worker: one vector per input, computed by the model's own process.

Two kinds of models embed:

* **Dedicated embedding models** (BERT, XLM-RoBERTa, ModernBERT, Qwen3-Embedding, EmbeddingGemma
  ...), loaded with ``mlx-embeddings`` (:class:`EncoderEmbedder`). Their vector is the model's own
  (``text_embeds``: its pooling, and its projection layers where it has them) unless a pooling is
  asked for (``models.<id>.embedding_pooling``) or, for the families whose output is a plain
  pooling, the checkpoint's sentence-transformers ``1_Pooling/config.json`` names one.
* **Any text model served by mlx-lm** (:class:`LMEmbedder`): its final hidden states (after the
  last norm, before the output layer) are pooled: ``mean`` by default, ``last`` (the last
  token, what decoder embedding models are trained for), or as ``1_Pooling/config.json`` says.

Batching: a request's inputs are tokenized at once (errors are known before any compute), sorted
by length and cut into groups whose padded size (rows x longest row) stays within
``batch_tokens`` and whose rows are at least half as long as their longest; each group is one
forward pass of a right-padded batch with its attention mask.
Right padding keeps every real token's position; a causal model's real tokens never see the
padding after them, so a padded row gives the same vector as the input alone. Groups may take
inputs of several requests. :class:`EmbeddingQueue` runs one group per turn of the worker loop,
so generation keeps stepping between groups of a large request.

Every vector is L2-normalized; ``dimensions`` keeps its first values and normalizes again (the
Matryoshka recipe). There is no prefix cache here: nothing of an embedding request is kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import mlx.core as mx
import numpy as np

from mlx_router.engine.types import EmbeddingRequest, EmbeddingResult, EngineError, LoadInfo

__all__ = [
    "Embedder",
    "EmbeddingQueue",
    "EmbeddingRejected",
    "EncoderEmbedder",
    "LMEmbedder",
    "Pooling",
    "normalize",
    "pool",
    "shorten",
    "st_pooling",
]

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "last", "cls"]

PLAIN_POOLING_TYPES = frozenset({"bert", "xlm_roberta", "modernbert", "qwen3"})
"""mlx-embeddings families whose own vector is a plain pooling of the last hidden states (no
projection after it): for these a sentence-transformers pooling file is honoured."""


class EmbeddingRejected(Exception):
    """An embedding request the model cannot serve (bad input, input too long, bad dimensions)."""

    def __init__(self, message: str, param: str = "input") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ---------------------------------------------------------------------------------- maths


def pool(hidden: mx.array, lengths: mx.array, mode: Pooling) -> mx.array:
    """One vector per row of right-padded hidden states ``(batch, length, width)``; ``lengths``
    holds each row's real tokens. ``mean`` averages them, ``last`` takes the last one, ``cls``
    the first."""
    hidden = hidden.astype(mx.float32)
    if mode == "cls":
        return hidden[:, 0, :]
    if mode == "last":
        index = (lengths - 1).astype(mx.int32)[:, None, None]
        return mx.take_along_axis(hidden, index, axis=1)[:, 0, :]
    mask = (mx.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(mx.float32)
    return (hidden * mask[:, :, None]).sum(axis=1) / mx.maximum(mask.sum(axis=1, keepdims=True), 1.0)


def normalize(vectors: mx.array) -> mx.array:
    """Rows scaled to length 1 (a zero row stays zero)."""
    vectors = vectors.astype(mx.float32)
    norms = mx.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / mx.maximum(norms, 1e-12)


def shorten(vectors: mx.array, dimensions: int | None) -> mx.array:
    """The first ``dimensions`` values of each row, renormalized (all of them when None)."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    return normalize(vectors)


def st_pooling(folder: Path) -> Pooling | None:
    """The pooling a sentence-transformers checkpoint declares (``1_Pooling/config.json``)."""
    try:
        config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if config.get("pooling_mode_lasttoken"):
        return "last"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    return None


# ---------------------------------------------------------------------------------- models


class Embedder(Protocol):
    """What :class:`EmbeddingQueue` needs from a model."""

    @property
    def context_length(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def tokenize(self, texts: list[str]) -> list[list[int]]: ...

    def embed(self, ids: mx.array, lengths: mx.array, pooling: Pooling | None) -> mx.array:
        """Unnormalized vectors ``(batch, width)`` of right-padded ``ids``."""
        ...

    @property
    def dimensions(self) -> int:
        """Width of this model's vectors."""
        ...


def _batch_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    encoded = tokenizer(texts, add_special_tokens=True)
    return [list(ids) for ids in encoded["input_ids"]]


def _probe_width(embedder: Embedder) -> int:
    vectors = embedder.embed(mx.array([[1, 1]]), mx.array([2]), None)
    return int(vectors.shape[-1])


@dataclass
class LMEmbedder:
    """Pooled final hidden states of an mlx-lm model (the worker's :class:`LMEngine`)."""

    engine: Any
    default_pooling: Pooling = "mean"
    _body: Any = None
    _width: int | None = None

    @classmethod
    def for_engine(cls, engine: Any, folder: str) -> LMEmbedder:
        return cls(engine, st_pooling(Path(folder)) or "mean")

    @property
    def context_length(self) -> int:
        return int(self.engine.context_length)

    @property
    def vocab_size(self) -> int:
        return int(self.engine.vocab_size)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        tokenizer = getattr(self.engine.tokenizer, "_tokenizer", self.engine.tokenizer)
        return _batch_ids(tokenizer, texts)

    def body(self) -> Any:
        """The module that returns the final hidden states: the model without its output layer
        (``model.model`` for most architectures; ``transformer`` or ``backbone`` for some; through
        ``language_model`` for wrappers). Checked once on a two-token input."""
        if self._body is None:
            body = _hidden_state_module(self.engine.model)
            width = getattr(getattr(self.engine.model, "args", None), "hidden_size", None)
            try:
                out = body(mx.array([[1, 1]]))
                ok = out.ndim == 3 and (width is None or out.shape[-1] == width)
            except Exception as exc:  # noqa: BLE001 (an architecture whose body needs more than token ids)
                logger.warning("hidden states unavailable: %r", exc)
                ok = False
            if not ok:
                raise EmbeddingRejected(
                    "this model's architecture does not expose its hidden states, so it cannot compute embeddings",
                    "model",
                )
            self._body = body
        return self._body

    def embed(self, ids: mx.array, lengths: mx.array, pooling: Pooling | None) -> mx.array:
        return pool(self.body()(ids), lengths, pooling or self.default_pooling)

    @property
    def dimensions(self) -> int:
        if self._width is None:
            self._width = _probe_width(self)
        return self._width


def _hidden_state_module(model: Any) -> Any:
    for name in ("model", "transformer", "backbone"):
        inner = getattr(model, name, None)
        if callable(inner):
            return inner
    inner = getattr(model, "language_model", None)
    if inner is not None:
        return _hidden_state_module(inner)
    raise EmbeddingRejected("this model's architecture does not expose its hidden states", "model")


@dataclass
class EncoderEmbedder:
    """A dedicated embedding model loaded with ``mlx-embeddings``."""

    model: Any
    tokenizer: Any
    context_length: int
    vocab_size: int
    pad_id: int
    model_type: str
    default_pooling: Pooling | None
    """None: the model's own vector (``text_embeds``)."""
    load_info: LoadInfo
    _width: int | None = None

    @classmethod
    def load(cls, model_path: str, *, context_length: int | None) -> EncoderEmbedder:
        from mlx_embeddings.utils import load as load_embedding_model

        started = time.perf_counter()
        folder = Path(model_path)
        model, tokenizer = load_embedding_model(model_path)
        mx.eval(model.parameters())
        config = json.loads((folder / "config.json").read_text())
        model_type = str(config.get("model_type", "")).replace("-", "_")
        positions = int(config.get("max_position_embeddings") or 512)
        # XLM-RoBERTa counts positions from its padding id + 1: two of them are never used.
        limit = context_length or positions - (2 if model_type == "xlm_roberta" else 0)
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        info = LoadInfo(
            load_seconds=time.perf_counter() - started,
            weight_bytes=int(mx.get_active_memory()) or sum(p.stat().st_size for p in folder.glob("*.safetensors")),
            context_length=limit,
            eos_token_ids=(),
            has_chat_template=False,
            backend="gpu" if mx.default_device() == mx.gpu else "cpu",
        )
        return cls(
            model,
            tokenizer,
            limit,
            int(config.get("vocab_size") or len(hf)),
            int(hf.pad_token_id if getattr(hf, "pad_token_id", None) is not None else 0),
            model_type,
            st_pooling(folder) if model_type in PLAIN_POOLING_TYPES else None,
            info,
        )

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return _batch_ids(getattr(self.tokenizer, "_tokenizer", self.tokenizer), texts)

    def embed(self, ids: mx.array, lengths: mx.array, pooling: Pooling | None) -> mx.array:
        mask = (mx.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(mx.int32)
        ids = mx.where(mask.astype(mx.bool_), ids, self.pad_id)
        out = self.model(ids, attention_mask=mask)
        pooling = pooling or self.default_pooling
        if pooling is None:
            return out.text_embeds  # type: ignore[no-any-return]  # mlx-embeddings' outputs are untyped
        return pool(out.last_hidden_state, lengths, pooling)

    @property
    def dimensions(self) -> int:
        if self._width is None:
            self._width = _probe_width(self)
        return self._width


# ---------------------------------------------------------------------------------- queue


@dataclass
class _Job:
    request: EmbeddingRequest
    ids: list[list[int]]
    pending: deque[int]
    """Input indices not embedded yet, longest first."""
    vectors: dict[int, bytes] = field(default_factory=dict)

    @property
    def request_id(self) -> str:
        return self.request.request_id


class EmbeddingQueue:
    """Embedding requests of one worker, computed a forward pass at a time."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.jobs: deque[_Job] = deque()

    @property
    def active(self) -> bool:
        return bool(self.jobs)

    def add(self, request: EmbeddingRequest) -> None:
        """Tokenize and check every input; :class:`EmbeddingRejected` refuses the whole request."""
        embedder = self.embedder
        texts = [(i, text) for i, text in enumerate(request.inputs) if isinstance(text, str)]
        tokenized = dict(zip((i for i, _ in texts), embedder.tokenize([text for _, text in texts]))) if texts else {}
        limit = min(request.max_input_tokens, embedder.context_length)
        ids: list[list[int]] = []
        for i, item in enumerate(request.inputs):
            row = tokenized[i] if isinstance(item, str) else list(item)
            if not row:
                raise EmbeddingRejected(f"input[{i}] is empty")
            if len(row) > limit:
                raise EmbeddingRejected(
                    f"input[{i}] has {len(row)} tokens; this model embeds at most {limit} tokens per input "
                    "(its context, and defaults.embedding_max_input_tokens)"
                )
            if not isinstance(item, str) and not all(0 <= t < embedder.vocab_size for t in row):
                raise EmbeddingRejected(
                    f"input[{i}] holds token ids outside this model's vocabulary (0 to {embedder.vocab_size - 1}). "
                    "Token ids must come from this model's own tokenizer; send text instead (LangChain's "
                    "OpenAIEmbeddings: check_embedding_ctx_length=False)"
                )
            ids.append(row)
        total = sum(len(row) for row in ids)
        if total > request.max_total_tokens:
            raise EmbeddingRejected(
                f"the inputs have {total} tokens together; at most {request.max_total_tokens} are allowed per request "
                "(defaults.embedding_max_request_tokens). Split them into several requests"
            )
        if request.dimensions is not None:
            width = embedder.dimensions
            if request.dimensions > width:
                raise EmbeddingRejected(
                    f"dimensions is {request.dimensions}, but this model's embeddings have {width} values", "dimensions"
                )
            if request.dimensions < width and not request.shortening:
                raise EmbeddingRejected(
                    f"this model's embeddings have {width} values and it is not declared to allow shorter ones "
                    "(models.<id>.embedding_dimensions)",
                    "dimensions",
                )
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        self.jobs.append(_Job(request, ids, deque(order)))

    def cancel(self, request_id: str) -> bool:
        for job in self.jobs:
            if job.request_id == request_id:
                self.jobs.remove(job)
                return True
        return False

    def step(self) -> list[EmbeddingResult | EngineError]:
        """One forward pass over the next group (the oldest request first, topped up with inputs
        of the next ones while the padded size allows, and only inputs at least half as long as
        the group's longest: padding stays under 2x); finished requests' results."""
        from mlx_router.engine.lm import classify_exception

        group = self._next_group()
        try:
            self._run(group)
        except Exception as exc:  # noqa: BLE001 (the requests of this group fail; the worker goes on)
            failed = {job.request_id: job for job, _ in group}
            for job in failed.values():
                self.jobs.remove(job)
            if isinstance(exc, EmbeddingRejected):
                return [EngineError("invalid_request", exc.message, rid, exc.param) for rid in failed]
            return [classify_exception(exc, rid) for rid in failed]
        done: list[EmbeddingResult | EngineError] = []
        while self.jobs and not self.jobs[0].pending:
            job = self.jobs.popleft()
            vectors = tuple(job.vectors[i] for i in range(len(job.ids)))
            done.append(EmbeddingResult(job.request_id, vectors, sum(len(row) for row in job.ids)))
        return done

    def _next_group(self) -> list[tuple[_Job, int]]:
        group: list[tuple[_Job, int]] = []
        longest = 0
        pooling = self.jobs[0].request.pooling
        for job in self.jobs:
            if job.request.pooling != pooling:  # one forward pass pools one way
                break
            while job.pending:
                i = job.pending[0]
                length = max(longest, len(job.ids[i]))
                if group and ((len(group) + 1) * length > job.request.batch_tokens or 2 * len(job.ids[i]) < length):
                    return group
                group.append((job, job.pending.popleft()))
                longest = length
        return group

    def _run(self, group: list[tuple[_Job, int]]) -> None:
        rows = [job.ids[i] for job, i in group]
        width = max(len(row) for row in rows)
        ids = mx.array([row + [0] * (width - len(row)) for row in rows], dtype=mx.int32)
        lengths = mx.array([len(row) for row in rows], dtype=mx.int32)
        vectors = self.embedder.embed(ids, lengths, group[0][0].request.pooling)
        sizes = {job.request.dimensions for job, _ in group}
        if len(sizes) == 1:
            values = np.asarray(shorten(vectors, sizes.pop()), dtype="<f4")
            for row, (job, i) in enumerate(group):
                job.vectors[i] = values[row].tobytes()
            return
        for row, (job, i) in enumerate(group):  # requests asking for different sizes share the pass
            job.vectors[i] = np.asarray(shorten(vectors[row : row + 1], job.request.dimensions)[0], dtype="<f4").tobytes()
