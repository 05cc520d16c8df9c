"""The prompts of a run, counted in the model's own tokens through its chat template.

Prompts are built from common English words, seeded per stream and round, and start with their
seed, so no two prompts share a prefix unless a scenario wants one (the prefix pair).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["WORDS", "Workload", "build_text", "eos_ids"]

WORDS = (  # noqa: SIM905 (200 words read better as text)
    "the a of and to in is was for on with as by at from that this it be are have has had not but or an they "
    "time year people way day man thing woman life child world school state family student group country problem "
    "hand part place case week company system program question work government number night point home water "
    "room mother area money story fact month lot right study book eye job word business issue side kind head "
    "house service friend father power hour game line end member law car city community name president team "
    "minute idea kid body information back parent face others level office door health person art war history "
    "party result change morning reason research girl guy moment air teacher force education river garden bread "
    "makes takes gives finds tells asks seems feels leaves calls keeps brings begins shows hears plays runs moves "
    "lives believes holds writes stands turns starts means opens walks reads grows loses falls reaches remains "
    "good new first last long great little own other old right big high different small large next early young "
    "important few public bad same able quiet bright slow warm green simple clear"
).split()



def _sentence(rng: random.Random) -> list[str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    words[0] = words[0].capitalize()
    words[-1] += "."
    return words


def build_text(encode: Callable[[str], list[int]], n_tokens: int, seed: str) -> str:
    """Deterministic text of at most ``n_tokens`` tokens (as close as words allow) starting with
    ``[seed]``, so prompts with different seeds share no prefix."""
    rng = random.Random(seed)
    words = [f"[{seed}]"]
    while len(encode(" ".join(words))) < n_tokens:
        missing = n_tokens - len(encode(" ".join(words)))
        while missing > 0:
            sentence = _sentence(rng)
            words += sentence
            missing -= len(sentence)
    lo, hi = 1, len(words)
    while lo < hi:  # the most words that fit
        mid = (lo + hi + 1) // 2
        if len(encode(" ".join(words[:mid]))) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


class Workload:
    """The tokenizer side of the run: prompts as chat messages, counted with the chat template."""

    def __init__(self, model_path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.encode: Callable[[str], list[int]] = lambda s: self.tokenizer.encode(s, add_special_tokens=False)
        self.overhead = len(self.templated([{"role": "user", "content": ""}]))

    def templated(self, messages: list[dict[str, str]]) -> list[int]:
        ids: Any = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def user(self, n_tokens: int, seed: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": build_text(self.encode, max(1, n_tokens - self.overhead), seed)}]

    def round(self, concurrency: int, n_tokens: int, tag: str = "c") -> list[list[dict[str, str]]]:
        return [self.user(n_tokens, f"{tag}{concurrency}-{i}") for i in range(concurrency)]

    def rounds(self, concurrency: int, n_tokens: int, repeat: int) -> list[list[list[dict[str, str]]]]:
        """``repeat`` rounds of distinct prompts (the first round's seeds do not depend on ``repeat``)."""
        return [self.round(concurrency, n_tokens, "c" if r == 0 else f"r{r}c") for r in range(repeat)]

    def system(self, n_tokens: int, seed: str) -> str:
        """A system prompt of about ``n_tokens`` tokens."""
        return build_text(self.encode, n_tokens, seed)

    def prefix_pair(self, n_tokens: int) -> list[list[dict[str, str]]]:
        system = {"role": "system", "content": self.system(n_tokens, "shared-prefix")}
        return [[system, {"role": "user", "content": q}] for q in
                ("What is the first word above?", "How many sentences are there above?")]


def eos_ids(model_path: Path, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        with contextlib.suppress(OSError, ValueError):
            value = json.loads((model_path / name).read_text()).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
