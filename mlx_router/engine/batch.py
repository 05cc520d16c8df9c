"""Continuous batching: every active sequence of a model shares each decode step.

Built on mlx-lm's ``BatchGenerator`` (chunked prefill interleaved with decoding, per-sequence
samplers, logits processors, max_tokens and stop tokens) and on the block prefix cache of
:mod:`mlx_router.engine.prefix_cache` (mlx-lm's ``LRUPromptCache`` for models whose KV cannot
be cut into blocks). This module adds what a
server needs on top: admission (tokenize, bound by the context, look up the prefix cache),
per-sequence text (streaming detokenizer, stop strings that are never half-sent), logprobs,
cancellation, and one list of chunks per step for the worker to send.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationBatch, PromptProcessingBatch, _right_pad_prompts
from mlx_lm.models.cache import BatchKVCache, LRUPromptCache, make_prompt_cache

from mlx_router.engine.constrain import ConstraintGroup, ConstraintProcessor, TrackingSampler
from mlx_router.engine.lm import LMEngine, attend_short_chunks_directly, logits_processors, make_sampler
from mlx_router.engine.prefix_cache import DiskTier, PrefixCache, blockable
from mlx_router.engine.types import (
    Admission,
    BatchOptions,
    FinishReason,
    GenerationChunk,
    GenerationParams,
    GenerationRequest,
    TokenLogprob,
)

__all__ = ["BatchScheduler", "canonical_request", "canonicalize_messages"]

logger = logging.getLogger(__name__)

MODEL_KEY = "model"
"""One prefix cache per worker, so one key: caches never mix models."""

SHARED_SAMPLERS = 32
"""Distinct sampling settings whose sampler unseeded requests share (least recently used go)."""

_BILLING_LINE = re.compile(r"^x-anthropic-billing-header:.*$", re.MULTILINE)


def canonicalize_messages(messages: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """Blank volatile lines some agent clients put in system prompts (a per-request billing
    header), so that otherwise identical prompts share their cached prefix."""
    out = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "system" and isinstance(content, str) and "x-anthropic-billing-header:" in content:
            message = {**message, "content": _BILLING_LINE.sub("x-anthropic-billing-header:", content)}
        out.append(message)
    return tuple(out)


def _keep_leading_space(detokenizer: Any) -> None:
    """mlx-lm's detokenizers drop the first token's leading space, which suits chat answers but
    not a raw continuation ("The capital of France is" + " Paris")."""
    if hasattr(detokenizer, "trim_space"):  # SentencePiece
        detokenizer.trim_space = False
    if hasattr(detokenizer, "_maybe_trim_space"):  # byte-level BPE
        detokenizer._maybe_trim_space = lambda text: text


class _Sequence:
    """The text side of one sequence: detokenizer, stop strings, counts, logprobs."""

    def __init__(self, request: GenerationRequest, engine: LMEngine, prompt_ids: list[int], max_tokens: int) -> None:
        self.request_id = request.request_id
        self.prompt_ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.max_tokens = max_tokens
        self.completion_tokens = 0
        self.engine = engine
        self.top = request.params.top_logprobs if request.params.logprobs else None
        self.stops = tuple(s for s in request.params.stop if s)
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.emitted = 0
        """Characters of text sent so far."""
        self.held: list[tuple[int, TokenLogprob]] = []
        """Logprobs not sent yet, with the text position where their token starts."""
        self.detok = engine.tokenizer.detokenizer
        if request.messages is None:
            _keep_leading_space(self.detok)

    def consume(self, token: int, vector: mx.array, finish: str | None) -> GenerationChunk:
        """One generated token; ``finish`` is mlx-lm's reason (``stop`` or ``length``) when it ended."""
        """One generated token (and the batch's verdict) in, the text that may be shown out."""
        if token in self.engine.eos_token_ids:
            finish = "stop"
        else:
            if self.top is not None:
                start = self.emitted + len(self.pending)
                self.held.append((start, self.engine.token_logprob(token, vector, self.top)))
            self.completion_tokens += 1
            self.detok.add_token(token)
            self.pending += self.detok.last_segment
        if finish is not None:
            self.detok.finalize()
            self.pending += self.detok.last_segment
        text, matched = self._take_text(final=finish is not None)
        if matched is not None:
            finish = "stop"
        self.emitted += len(text)
        return GenerationChunk(
            request_id=self.request_id,
            text=text,
            completion_tokens=self.completion_tokens,
            prompt_tokens=self.prompt_tokens,
            finish_reason=cast("FinishReason | None", finish),  # mlx-lm gives "stop", "length" or None
            logprobs=self._release_logprobs(final=finish is not None, cut=matched is not None),
            stop_sequence=matched,
        )

    def _release_logprobs(self, *, final: bool, cut: bool) -> tuple[TokenLogprob, ...]:
        """Logprobs of tokens whose text has started to be sent. At the end all the rest, except
        after a stop string: its tokens (starting at or after the cut) are dropped with it."""
        if not self.held:
            return ()
        if final and not cut:
            ready = [lp for _, lp in self.held]
        else:
            ready = [lp for start, lp in self.held if start < self.emitted]
        self.held = [] if final else self.held[len(ready) :]
        return tuple(ready)

    def _take_text(self, *, final: bool) -> tuple[str, str | None]:
        """Text safe to emit, holding back what could still become a stop string; and the stop
        string found first, if any."""
        pending = self.pending
        if self.stops:
            hits = [(i, s) for s in self.stops if (i := pending.find(s)) >= 0]
            if hits:
                self.pending = ""
                at, stop = min(hits)
                return pending[:at], stop
        cut = len(pending) if final or not self.stops else max(0, len(pending) - self.holdback)
        self.pending = pending[cut:]
        return pending[:cut], None


def prefill_width(n: int, limit: int) -> int:
    """The length a prefill chunk of ``n`` tokens is padded to: 16 at least, then four widths per
    doubling (17-32 in steps of 4, 33-64 in steps of 8, ..., 1025-2048 in steps of 256), never
    past ``limit``. At most a quarter of a chunk is padding, and a model meets about 30 prefill
    shapes instead of one per prompt length."""
    if n <= 16:
        width = 16
    else:
        quarter = 1 << (n.bit_length() - 3)
        width = -(-n // quarter) * quarter
    return max(n, min(width, limit))


def prefill_widths(limit: int) -> list[int]:
    """Every width :func:`prefill_width` gives up to ``limit``, shortest first."""
    return sorted({prefill_width(n, limit) for n in range(1, limit + 1)})


class _Prompts(PromptProcessingBatch):
    """mlx-lm's prompt batch, with each prefill chunk right-padded to a :func:`prefill_width`
    (``pad``) and MLX's buffer cache left alone after a chunk (``keep_buffers``).

    The CUDA backend prepares kernels for every new shape it meets (70-100 ms each on an H100,
    up to a second inside a batch), so a server whose prompts all have different lengths would
    pay that on most requests. The padding goes after the real tokens, which the causal mask
    keeps from seeing it; the batch cache then moves it to the left, where it stays masked (the
    same path mlx-lm takes for a batch of prompts of different lengths).

    mlx-lm empties MLX's buffer cache after every chunk. On the CUDA backend that gives every
    cached buffer back (``cudaFree``) and makes the next step allocate each one again
    (``cudaMallocManaged``, then page faults as the GPU first touches it); with ``keep_buffers``
    the cache stays, bounded by MLX's cache limit (``BatchOptions.buffer_cache_bytes``)."""

    pad = False
    keep_buffers = False

    def prompt(self, tokens: list[list[int]]) -> None:
        if (
            len(self.uids) != len(tokens)
            or not tokens
            or max(len(t) for t in tokens) > self.prefill_step_size
            or not (self.pad or self.keep_buffers)
        ):
            super().prompt(tokens)
            return
        for recorded, new in zip(self.tokens, tokens):
            recorded += new
        lengths = [len(t) for t in tokens]
        width = prefill_width(max(lengths), self.prefill_step_size) if self.pad else max(lengths)
        padding = [width - n for n in lengths]
        inputs = _right_pad_prompts(tokens, max_length=width)
        if max(padding) > 0:
            for c in self.prompt_cache:
                c.prepare(lengths=lengths, right_padding=padding)
        self.model(inputs, cache=self.prompt_cache)
        mx.eval([c.state for c in self.prompt_cache])
        if max(padding) > 0:
            for c in self.prompt_cache:
                c.finalize()
            mx.eval([c.state for c in self.prompt_cache])
        if not self.keep_buffers:
            mx.clear_cache()


class _DecodeCache(BatchKVCache):
    """mlx-lm's batch cache, giving a decode step no mask when no row is padded.

    mlx-lm's batch cache always hands attention a mask array, even when it masks nothing. On
    the CUDA backend a mask array rules out both fused decode kernels (the vector kernel and
    cuDNN), so every layer's attention ran as separate matrix products, a softmax and the mask's
    conversion. A batch of one stream has no padding (the prefill widths' padding is cut when a
    sequence moves from prefill to decode, as is the padding all rows share when a batch
    shrinks), and then decodes as ``stream_generate`` does. Larger batches keep the mask."""

    _checked: mx.array | None = None
    _padded: bool = True

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> Any:
        if N == 1 and not return_array and kwargs.get("window_size") is None and not self._has_padding():
            return None
        return super().make_mask(N, return_array=return_array, **kwargs)

    def _has_padding(self) -> bool:
        """Read on the host once per new padding array of a batch of one (it shrank to one); a
        larger batch is taken as padded, since its rows rarely have one length, so that a batch
        that grows never waits for the step in flight to read its new padding."""
        if self.left_padding.shape[0] > 1:
            return True
        if self._checked is not self.left_padding:
            self._checked = self.left_padding
            self._padded = bool(mx.any(self.left_padding > 0).item())
        return self._padded


class _GroupedSampling(GenerationBatch):
    """mlx-lm's decode batch, sampling each group of rows that share a sampler in one call.
    mlx-lm samples a batch in one call only when every row holds the same sampler, else row by
    row; one greedy or seeded request among sampled ones would make every row a call of its own.
    Its layers' batch caches become :class:`_DecodeCache` (a mask only where rows are padded)."""

    on_decoded: Callable[[list[Any]], None] | None = None
    """Called with each decode step's responses as soon as they are sampled, before the
    generator runs the prefill chunk of the same step (:attr:`BatchScheduler.emit`)."""

    def next(self) -> list[Any]:
        responses = super().next()
        if self.on_decoded is not None:
            self.on_decoded(responses)
        return responses

    def _step(self) -> Any:
        for c in self.prompt_cache:
            if type(c) is BatchKVCache:
                c.__class__ = _DecodeCache
        samplers = self.samplers
        grouped = _by_sampler([self.fallback_sampler if s is None else s for s in samplers or ()])
        if grouped is None:
            return super()._step()
        self.samplers = [grouped] * len(self.uids)
        try:
            return super()._step()
        finally:
            self.samplers = samplers


def _by_sampler(samplers: list[Callable[[mx.array], mx.array]]) -> Callable[[mx.array], mx.array] | None:
    """One sampler for a batch whose rows hold several: it calls each on the rows that hold it
    and puts the tokens back in row order. None when grouping saves no call (one sampler for
    all rows, which mlx-lm calls once, or one per row)."""
    groups: dict[int, tuple[Callable[[mx.array], mx.array], list[int]]] = {}
    for row, sampler in enumerate(samplers):
        groups.setdefault(id(sampler), (sampler, []))[1].append(row)
    if len(groups) in (1, len(samplers)):
        return None
    order = [row for _, rows in groups.values() for row in rows]
    inverse = [0] * len(order)
    for position, row in enumerate(order):
        inverse[row] = position
    indices = [mx.array(rows) for _, rows in groups.values()]
    back = mx.array(inverse)

    def sample(logprobs: mx.array) -> mx.array:
        drawn = [sampler(logprobs[rows]) for (sampler, _), rows in zip(groups.values(), indices)]
        return mx.concatenate(drawn)[back]

    return sample


class BatchScheduler:
    """Admits requests into one ``BatchGenerator`` and turns each step into chunks."""

    def __init__(self, engine: LMEngine, options: BatchOptions) -> None:
        self.engine = engine
        engine.grammar_cache_size = options.grammar_cache_entries
        self.options = options
        self.prefix_cache = _prefix_cache(engine, options)
        self._sequences: dict[int, _Sequence] = {}
        self._uids: dict[str, int] = {}
        self._constrained: dict[int, ConstraintProcessor] = {}
        """Sequences under a grammar, by uid; their masks are computed together (``_group``)."""
        self._group: ConstraintGroup | None = None
        self._samplers: OrderedDict[tuple[float, float, float, int], Callable[[mx.array], mx.array]] = OrderedDict()
        """One sampler per sampling setting, shared by the unseeded requests that ask for it."""
        self.buckets = _use_buckets(engine, options)
        cold = attend_short_chunks_directly(engine.model) if self.buckets else None
        self.buffer_cache_bytes = _buffer_cache_bytes(engine, options)
        if self.buffer_cache_bytes:
            mx.set_cache_limit(self.buffer_cache_bytes)
        self._warm_widths = prefill_widths(options.prefill_step_size) if self.buckets and options.prefill_warmup else []
        """Prefill widths still to prepare while the worker is idle (longest last)."""
        self._cold: set[int] = cold if cold is not None else set()
        """The same widths, as the model's attention reads them: a prompt's first chunk of one of
        these widths, alone in its batch, attends through matrix products, so a request that
        comes before its width is prepared does not wait for the fused kernel's preparation."""
        self._cold.update(self._warm_widths)
        self.emit: Callable[[list[GenerationChunk]], None] | None = None
        """Where a step's decoded chunks go as soon as they are sampled (the worker's pipe). mlx-lm
        runs a step's decode, then a prefill chunk for waiting prompts, in one call: without this
        the running streams' tokens, and the first tokens of the prompts that just finished their
        prefill, waited for the next prompts' prefill, a whole chunk of up to
        ``prefill_batch_size`` prompts. None: :meth:`step` returns every chunk."""
        self._early: list[tuple[Any, _Sequence, GenerationChunk]] | None = None
        self._generator = self._new_generator()

    def _new_generator(self) -> BatchGenerator:
        generator = BatchGenerator(
            self.engine.model,
            stop_tokens=[[t] for t in sorted(self.engine.eos_token_ids)],
            completion_batch_size=self.options.max_batch_size,
            prefill_batch_size=self.options.prefill_batch_size,
            prefill_step_size=self.options.prefill_step_size,
        )
        # The prompt batch lives as long as the generator (``split`` keeps its class).
        prompts = generator._prompt_batch
        prompts.__class__ = _Prompts
        prompts.pad, prompts.keep_buffers = self.buckets, self.buffer_cache_bytes > 0
        # So does the decode batch: new sequences are added to it with ``extend``.
        generator._generation_batch.__class__ = _GroupedSampling
        generator._generation_batch.on_decoded = self._decoded
        return generator

    @property
    def active(self) -> int:
        return len(self._sequences)

    def add(self, request: GenerationRequest) -> Admission:
        """Tokenize, bound by the context, reuse a cached prefix and queue the sequence."""
        request = canonical_request(request)
        prompt_ids, max_tokens = self.engine.admit(request)
        processors = logits_processors(request.params)
        sampler = self.sampler(request.params)
        constraint = self.engine.constraint_processor(request)
        if constraint is not None:
            processors.append(constraint)  # last: the mask has the final word
            if self._group is None:
                self._group = ConstraintGroup()
            self._group.add(constraint)
            sampler = TrackingSampler(sampler, constraint)
        cache, cached = None, 0
        if isinstance(self.prefix_cache, PrefixCache):
            cache, cached = self.prefix_cache.fetch(prompt_ids)
        elif self.prefix_cache is not None:
            cache, rest = self.prefix_cache.fetch_nearest_cache(MODEL_KEY, prompt_ids)
            cached = len(prompt_ids) - len(rest)
        rest = prompt_ids[cached:]
        (uid,) = self._generator.insert(
            [rest],
            max_tokens=[max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[prompt_ids[:cached]],
            samplers=[sampler],
            logits_processors=[processors],
        )
        if constraint is not None:
            self._constrained[uid] = constraint
        sequence = _Sequence(request, self.engine, prompt_ids, max_tokens)
        self._sequences[uid] = sequence
        self._uids[request.request_id] = uid
        return Admission(
            request_id=request.request_id,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            reasoning_open=self.engine.reasoning_open(prompt_ids),
            cached_tokens=cached,
            reasoning_format=self.engine.reasoning_format,
            tool_format=self.engine.output_tool_format(request),
        )

    def count(self, request: GenerationRequest) -> int:
        """The prompt tokens :meth:`add` would admit the request with (its template, tools and
        images included), without admitting it: nothing is prefilled or generated."""
        request = canonical_request(request)
        return self.engine.count_tokens(request)

    def sampler(self, params: GenerationParams) -> Callable[[mx.array], mx.array]:
        """The sampler of a new sequence. mlx-lm samples a batch in one call only when every
        sequence holds the same sampler object, else row by row (one graph per row and step), so
        unseeded requests with equal settings share one sampler and one random key: their rows
        are still drawn independently. A seeded request keeps a key of its own, so its seed
        reproduces its tokens whatever runs beside it; greedy decoding is one function for all."""
        if params.temperature == 0 or params.seed is not None:
            return make_sampler(params)
        key = (params.temperature, params.top_p, params.min_p, params.top_k)
        sampler = self._samplers.get(key)
        if sampler is None:
            sampler = self._samplers[key] = make_sampler(params)
            if len(self._samplers) > SHARED_SAMPLERS:
                self._samplers.popitem(last=False)  # sequences that hold it keep it
        else:
            self._samplers.move_to_end(key)
        return sampler

    def cancel(self, request_id: str) -> int | None:
        """Drop a sequence (queued, prefilling or decoding); it produces nothing more.

        Returns how many tokens it had generated, or None if it was no longer running."""
        uid = self._uids.pop(request_id, None)
        if uid is None:
            return None
        sequence = self._sequences.pop(uid, None)
        self._generator.remove([uid])
        self._unconstrain(uid)
        return sequence.completion_tokens if sequence is not None else None

    def step(self) -> list[GenerationChunk]:
        """One decode step for every decoding sequence (and one prefill chunk for new ones).
        Returns the step's chunks, or none when :attr:`emit` has had them already."""
        self._early = []
        try:
            _prompt_responses, responses = self._generator.next()
            early = self._early
        finally:
            self._early = None
        decoded = early or self._consume(responses)
        chunks = [] if early else [chunk for _, _, chunk in decoded]
        for response, sequence, chunk in decoded:
            if chunk.finish_reason is None:
                continue
            self._finish(response.uid, sequence)
            if response.finish_reason is not None:
                self._remember(response.all_tokens, response.prompt_cache)
            else:  # a stop string ended it: the batch still holds the sequence
                caches = self._generator.remove([response.uid], return_prompt_caches=True)
                for cache, tokens in caches.values():
                    self._remember(tokens, cache)
        return chunks

    def _consume(self, responses: list[Any]) -> list[tuple[Any, _Sequence, GenerationChunk]]:
        """The chunks of a decode step's responses (sequences cancelled since are skipped)."""
        decoded = []
        for response in responses:
            sequence = self._sequences.get(response.uid)
            if sequence is not None:
                decoded.append((response, sequence, sequence.consume(int(response.token), response.logprobs, response.finish_reason)))
        return decoded

    def _decoded(self, responses: list[Any]) -> None:
        """A decode step was sampled, inside :meth:`step`: its chunks go to :attr:`emit` now;
        ending the finished sequences waits until the generator's call returns."""
        if self.emit is None or self._early is None or not responses:
            return
        self._early = self._consume(responses)
        if self._early:
            self.emit([chunk for _, _, chunk in self._early])

    def fail_all(self) -> list[str]:
        """After an error in a step: drop every sequence and start a fresh batch."""
        failed = [s.request_id for s in self._sequences.values()]
        self._sequences.clear()
        self._uids.clear()
        self._constrained.clear()
        if self._group is not None:
            self._group.clear()
        self._generator.close()
        self._generator = self._new_generator()
        return failed

    def run_to_end(self, request: GenerationRequest) -> list[GenerationChunk]:
        """Generate one request alone until it finishes (the load's warm-up). Its prompt goes
        through the fused attention, so that the backend's first use of it (on a CUDA GPU,
        loading cuDNN) happens here and not in the first piece of idle work, which a request
        arriving then would wait for."""
        cold = set(self._cold)
        self._cold.clear()
        try:
            self.add(request)
            chunks: list[GenerationChunk] = []
            while self.active:
                chunks.extend(self.step())
        finally:
            self._cold.update(cold)
        return chunks

    def warm_up(self, tokens: int | None) -> None:
        """The last step of a load: generate ``tokens`` tokens for a chat message, so that the
        kernels are prepared, the chat template compiled and the tokenizer's first call made before
        the model is ready, not in the first client's request; a raw prompt where the template
        refuses the message. None: 4 on a CUDA GPU, else none."""
        if tokens is None:
            tokens = 4 if _on_cuda(self.engine) else 0
        if tokens <= 0:
            return
        params = GenerationParams(max_tokens=tokens)
        try:
            self.engine.encode(GenerationRequest("warmup", params, messages=({"role": "user", "content": "Hello"},)))
        except Exception:  # noqa: BLE001 (a template that needs more than one user message still loads)
            self.run_to_end(GenerationRequest("warmup", params, prompt="Hello"))
        else:
            self.run_to_end(GenerationRequest("warmup", params, messages=({"role": "user", "content": "Hello"},)))

    def _finish(self, uid: int, sequence: _Sequence) -> None:
        self._sequences.pop(uid, None)
        if self._uids.get(sequence.request_id) == uid:
            del self._uids[sequence.request_id]
        self._unconstrain(uid)

    def _unconstrain(self, uid: int) -> None:
        constraint = self._constrained.pop(uid, None)
        if constraint is not None and self._group is not None:
            self._group.remove(constraint)

    def _remember(self, tokens: list[int] | None, cache: list[Any] | None) -> None:
        """Keep a finished sequence's KV for requests that share its prefix."""
        if self.prefix_cache is None or not tokens or cache is None:
            return
        active = self._generator.prompt_cache_nbytes
        if isinstance(self.prefix_cache, PrefixCache):
            self.prefix_cache.insert(tokens, cache)
            self.prefix_cache.trim_to(self.options.prefix_cache_bytes - active)
            return
        self.prefix_cache.insert_cache(MODEL_KEY, list(tokens), cache)
        self.prefix_cache.trim_to(n_bytes=self.options.prefix_cache_bytes - active)

    @property
    def warming(self) -> int:
        """Prefill widths still to prepare in idle time (0 once every one is ready)."""
        return len(self._warm_widths)

    def idle_work(self) -> bool:
        """One piece of work for a moment without sequences: prepare the kernels of one prefill
        width, else write one block to the disk tier. False when there is none."""
        if self._warm_widths and not self.active:
            self._warm(self._warm_widths.pop(0))
            return True
        disk = self.prefix_cache.disk if isinstance(self.prefix_cache, PrefixCache) else None
        return disk is not None and disk.write_one()

    def _warm(self, width: int) -> None:
        """Prefill ``width`` tokens and decode one, kept nowhere (no prefix cache, no chunk); from
        then on a first chunk of that width attends through the fused kernel."""
        self._cold.discard(width)
        (uid,) = self._generator.insert([[0] * (width + 1)], max_tokens=[1])
        while not any(r.uid == uid for r in self._generator.next()[1]):
            pass

    def close(self) -> None:
        """Before the process exits: write what the disk tier still has pending, for at most
        ``prefix_cache_flush_seconds``."""
        if isinstance(self.prefix_cache, PrefixCache) and self.prefix_cache.disk is not None:
            self.prefix_cache.disk.flush(self.options.prefix_cache_flush_seconds)


def _use_buckets(engine: LMEngine, options: BatchOptions) -> bool:
    """Padded prefill widths: when configured so, else on a CUDA GPU (where each new shape
    costs a kernel preparation), for models whose every layer keeps a plain KV cache."""
    wanted = options.prefill_buckets
    if wanted is None:
        wanted = _on_cuda(engine)
    return wanted and blockable(make_prompt_cache(engine.model))


def _buffer_cache_bytes(engine: LMEngine, options: BatchOptions) -> int:
    """MLX buffers kept for reuse (0: emptied after every prefill chunk): as configured, else
    2 GiB on a CUDA GPU, where giving buffers back and allocating them again is costly."""
    if options.buffer_cache_bytes is not None:
        return options.buffer_cache_bytes
    return 2 << 30 if _on_cuda(engine) else 0


def _on_cuda(engine: LMEngine) -> bool:
    """Whether the model runs on MLX's CUDA backend (a GPU on Linux)."""
    return engine.load_info.backend == "gpu" and sys.platform.startswith("linux")


def _prefix_cache(engine: LMEngine, options: BatchOptions) -> PrefixCache | LRUPromptCache | None:
    """Blocks for full-attention models (with a disk tier when configured), mlx-lm's cache of
    whole sequences for the others, nothing when the budget is 0."""
    if options.prefix_cache_bytes <= 0:
        return None
    layers = make_prompt_cache(engine.model)
    if not blockable(layers):
        return LRUPromptCache(max_size=options.prefix_cache_entries, max_bytes=options.prefix_cache_bytes)
    disk = None
    if options.prefix_cache_directory and options.prefix_cache_disk_bytes > 0 and engine.model_path:
        try:
            disk = DiskTier(
                options.prefix_cache_directory,
                engine.model_path,
                options.prefix_cache_block_tokens,
                options.prefix_cache_disk_bytes,
            )
        except OSError as exc:
            logger.warning("prefix cache: no disk tier (%s)", exc)
    return PrefixCache(
        layers=len(layers), block_tokens=options.prefix_cache_block_tokens, max_bytes=options.prefix_cache_bytes, disk=disk
    )


def canonical_request(request: GenerationRequest) -> GenerationRequest:
    """The request with its messages canonical (:func:`canonicalize_messages`): what admission
    and counting tokenize, so both see the same prompt."""
    if request.messages is None:
        return request
    messages = canonicalize_messages(request.messages)
    return request if messages == request.messages else replace(request, messages=messages)

