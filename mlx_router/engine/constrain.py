"""Constrained decoding inside the batch: a logits processor per sequence, driven by llguidance.

Each constrained sequence gets its own matcher (a copy of one compiled per grammar and kept in
a small LRU, so a schema is compiled once however many requests use it). Every decode step the
processor feeds the matcher the token sampled last, asks it which tokens may come next (a bitmask
computed in Rust, ~0.1 ms for a 49k vocabulary) and sets the others to -inf with plain MLX ops,
so it runs on every MLX backend (llguidance's own MLX helper is a Metal kernel). When the grammar
is complete only end-of-sequence tokens remain allowed, which ends the sequence.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_router.engine.types import Constraint
from mlx_router.text.constraints import forced_format, json_grammar, tool_grammar

__all__ = ["ConstraintProcessor", "Grammars"]

logger = logging.getLogger(__name__)


class Grammars:
    """Grammars compiled against one tokenizer, cached by their text."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: list[int], capacity: int = 64) -> None:
        import llguidance
        import llguidance.hf

        self._llguidance = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids)
        self._hf = hf_tokenizer
        self.vocab_size = vocab_size
        self.capacity = capacity
        self._cache: OrderedDict[str, Any] = OrderedDict()

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

    def matcher(self, grammar: str) -> Any:
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
    """mlx-lm logits processor ``(tokens, logits) -> logits`` for one sequence."""

    def __init__(self, matcher: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        from llguidance.numpy import allocate_token_bitmask

        self.matcher = matcher
        self.bitmask = allocate_token_bitmask(1, vocab_size)
        self.eos = list(eos_token_ids)
        self._started = False
        self.failed = False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        from llguidance.numpy import fill_next_token_bitmask

        # The context ends with the token sampled last step (the first call sees the prompt).
        if self._started and not self.failed and not self.matcher.consume_token(int(tokens[-1].item())):
            self.failed = True
            logger.warning("constrained sequence left its grammar: %s", self.matcher.get_error())
        self._started = True
        size = logits.shape[-1]
        if self.failed:  # end the sequence rather than produce output that breaks the contract
            allowed = np.zeros(size, dtype=np.bool_)
            allowed[[t for t in self.eos if t < size]] = True
            mask = mx.array(allowed)
        else:
            fill_next_token_bitmask(self.matcher, self.bitmask)
            mask = _unpack(self.bitmask[0], size)
        return mx.where(mask, logits, mx.array(-float("inf"), dtype=logits.dtype))


_BIT_INDEX: dict[int, tuple[mx.array, mx.array]] = {}


def _unpack(words: np.ndarray, size: int) -> mx.array:
    """The bitmask (32 tokens per word) as a boolean array of ``size`` tokens.

    On a GPU only the packed words travel (4 KB per 32k tokens) and are unpacked there: a
    fresh host array of one byte per token costs far more to move each step than the unpacking.
    On the CPU, numpy unpacks faster than a gather."""
    if mx.default_device() == mx.cpu:
        bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(np.bool_)
        return mx.array(bits[:size] if bits.size >= size else np.pad(bits, (0, size - bits.size)))
    index = _BIT_INDEX.get(size)
    if index is None:
        token = mx.arange(size, dtype=mx.uint32)
        index = _BIT_INDEX[size] = (mx.minimum(token >> 5, words.size - 1), token & 31)
        mx.eval(index)
    word, shift = index
    packed = mx.array(words.view(np.uint32))
    bits = ((packed[word] >> shift) & 1).astype(mx.bool_)
    return bits if size <= words.size * 32 else bits & (mx.arange(size) < words.size * 32)

