"""Constrained decoding inside the batch: a logits processor per sequence, driven by llguidance.

Each constrained sequence gets its own matcher (a copy of one compiled per grammar and kept in
a small LRU, so a schema is compiled once however many requests use it). Every decode step the
processor feeds the matcher the token sampled last, asks it which tokens may come next (a bitmask
computed in Rust) and sets the others to -inf with plain MLX ops, so it runs on every MLX backend
(llguidance's own MLX helper is a Metal kernel). When the grammar is complete only
end-of-sequence tokens remain allowed, which ends the sequence.

The host work is done for all constrained sequences of a batch at once (a :class:`ConstraintGroup`):
each one's sampler keeps a handle on the token it drew, and the first processor called in the
next step reads every such token in one device sync, advances every matcher and fills every
bitmask in parallel (llguidance's executor threads). Done one sequence after the other, each
sync and each mask held the device idle in turn (measured: ×0.49 at 32 constrained sequences on
an H100, see docs/perf/CONSTRAINTS.md).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx
import numpy as np

from mlx_router.engine.types import Constraint
from mlx_router.text.constraints import forced_format, json_grammar, tool_grammar

if TYPE_CHECKING:
    from llguidance import LLMatcher

__all__ = ["ConstraintGroup", "ConstraintProcessor", "Grammars", "TrackingSampler"]

logger = logging.getLogger(__name__)


class Grammars:
    """Grammars compiled against one tokenizer, cached by their text."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: list[int], capacity: int = 64) -> None:
        import llguidance
        import llguidance.hf

        self._llguidance = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids)
        self._hf = hf_tokenizer
        self.capacity = capacity
        self._cache: OrderedDict[str, LLMatcher] = OrderedDict()

    def literal(self, text: str) -> str:
        """A marker in Lark: the special token when the tokenizer has it as one, else the text."""
        ids = self._hf.encode(text, add_special_tokens=False)
        if len(ids) == 1 and self.tokenizer.is_special_token(ids[0]):
            return f"<[{ids[0]}]>"
        return json.dumps(text, ensure_ascii=False)

    def grammar(self, constraint: Constraint, model_format: str) -> tuple[str, str | None]:
        """The grammar text for a constraint and, for tool calls, the format the calls are in."""
        if constraint.kind == "json":
            return json_grammar(json.loads(constraint.schema or '{"type": "object"}')), None
        answer = json.loads(constraint.schema) if constraint.schema else None
        tools = [json.loads(tool) for tool in constraint.tools]
        grammar = tool_grammar(model_format, tools, parallel=constraint.parallel, answer_schema=answer, literal=self.literal)
        return grammar, forced_format(model_format)

    def matcher(self, grammar: str) -> LLMatcher:
        """A fresh matcher for ``grammar`` (compiled on first use). Raises ValueError if invalid."""
        template = self._cache.get(grammar)
        if template is None:
            template = self._llguidance.LLMatcher(self.tokenizer, grammar)
            if template.is_error():
                raise ValueError(template.get_error())
            self._cache[grammar] = template
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(grammar)
        return template.deep_copy()


class ConstraintProcessor:
    """mlx-lm logits processor ``(tokens, logits) -> logits`` for one sequence.

    In a :class:`ConstraintGroup` (with a :class:`TrackingSampler`), its mask is computed with the
    group's; alone, it reads the last token from the context it is given (one sync per call)."""

    def __init__(self, matcher: LLMatcher, vocab_size: int, eos_token_ids: list[int]) -> None:
        from llguidance.numpy import allocate_token_bitmask

        self.matcher = matcher
        self.vocab_size = vocab_size
        self.bitmask = allocate_token_bitmask(1, vocab_size)
        self.eos = list(eos_token_ids)
        self._started = False
        self.failed = False
        self.group: ConstraintGroup | None = None
        self.pending: mx.array | None = None
        """The token drawn last step, not yet fed to the matcher (set by the tracking sampler)."""
        self.mask: mx.array | None = None
        """The allowed tokens for the next draw (None: to be computed)."""

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        size = logits.shape[-1]
        if self.group is not None:
            if self.mask is None or self.mask.shape[-1] != size:
                self.group.prepare(size)
            mask = self.mask
        else:
            if self._started:  # the context ends with the token drawn last step
                self.advance(int(tokens[-1]))
            mask = self.own_mask(size)
        self._started = True
        assert mask is not None
        return mx.where(mask, logits, mx.array(-float("inf"), dtype=logits.dtype))

    def advance(self, token: int) -> None:
        if not self.failed and not self.matcher.consume_token(token):
            self.failed = True
            logger.warning("constrained sequence left its grammar: %s", self.matcher.get_error())

    def own_mask(self, size: int) -> mx.array:
        from llguidance.numpy import fill_next_token_bitmask

        if self.failed:
            return _eos_only(self.eos, size)
        fill_next_token_bitmask(self.matcher, self.bitmask)
        return _unpack(self.bitmask, size)[0]


def _eos_only(eos: list[int], size: int) -> mx.array:
    """The mask of a sequence that left its grammar: it ends rather than break the contract."""
    allowed = np.zeros(size, dtype=np.bool_)
    allowed[[t for t in eos if t < size]] = True
    return mx.array(allowed)


class TrackingSampler:
    """Wraps a sequence's sampler to keep the token it draws for the group's next step."""

    def __init__(self, sampler: Callable[[mx.array], mx.array], processor: ConstraintProcessor) -> None:
        self.sampler = sampler
        self.processor = processor

    def __call__(self, logprobs: mx.array) -> mx.array:
        token = self.sampler(logprobs)
        self.processor.pending, self.processor.mask = token, None
        return token


class ConstraintGroup:
    """The constrained sequences of one batch, whose masks are computed together."""

    def __init__(self) -> None:
        from llguidance import LLExecutor

        self.members: list[ConstraintProcessor] = []
        self._executor = LLExecutor()

    def add(self, processor: ConstraintProcessor) -> None:
        processor.group = self
        self.members.append(processor)

    def remove(self, processor: ConstraintProcessor) -> None:
        if processor in self.members:
            self.members.remove(processor)
        processor.group = None

    def clear(self) -> None:
        for member in self.members:
            member.group = None
        self.members = []

    def prepare(self, size: int) -> None:
        """Feed every member the token it drew (one device sync for all) and compute every
        mask that is due, the bitmasks filled in parallel."""
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask_par

        due = [m for m in self.members if m.mask is None or m.mask.shape[-1] != size]
        drawn = [(m, m.pending) for m in due if m.pending is not None]
        if drawn:
            # one id per member: the list of a 1-D integer array
            tokens = cast("list[int]", mx.concatenate([p.reshape(-1)[-1:] for _, p in drawn]).tolist())
            for (member, _), token in zip(drawn, tokens):
                member.pending = None
                member.advance(int(token))
        live = [m for m in due if not m.failed]
        for member in due:
            if member.failed:
                member.mask = _eos_only(member.eos, size)
        if not live:
            return
        bitmask = allocate_token_bitmask(len(live), live[0].vocab_size)
        fill_next_token_bitmask_par(self._executor, [(m.matcher, i) for i, m in enumerate(live)], bitmask)
        masks = _unpack(bitmask, size)
        for i, member in enumerate(live):
            member.mask = masks[i]


_BIT_INDEX: dict[tuple[int, int], tuple[mx.array, mx.array, mx.array]] = {}


def _unpack(words: np.ndarray, size: int) -> mx.array:
    """Bitmask rows (32 tokens per word) as a boolean array of shape (rows, ``size``).

    On a GPU only the packed words travel (4 KB per 32k tokens) and are unpacked there: a host
    array of one byte per token costs more to move each step than the unpacking. On the CPU,
    numpy unpacks faster than a gather."""
    words = words.reshape(-1, words.shape[-1])
    width = words.shape[1]
    if mx.default_device() == mx.cpu:
        bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little").astype(np.bool_)
        bits = bits[:, :size] if bits.shape[1] >= size else np.pad(bits, ((0, 0), (0, size - bits.shape[1])))
        return mx.array(bits)
    index = _BIT_INDEX.get((size, width))
    if index is None:
        token = mx.arange(size, dtype=mx.uint32)
        inside = mx.arange(size) < width * 32
        index = _BIT_INDEX[(size, width)] = (mx.minimum(token >> 5, width - 1), token & 31, inside)
        mx.eval(index)
    word, shift, inside = index
    packed = mx.array(words.view(np.uint32))
    return (((packed[:, word] >> shift) & 1).astype(mx.bool_)) & inside

