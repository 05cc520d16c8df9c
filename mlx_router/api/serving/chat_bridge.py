"""Running a translated request as a chat job (the agent APIs' shared part).

The Anthropic Messages and OpenAI Responses endpoints build a chat request and hand it to the
same preparation and runner as ``/v1/chat/completions`` (:mod:`mlx_router.api.serving.chat`):
the same validation, media loading, batching, prefix cache, tool-call reading, reasoning
splitting, constrained decoding, limits, cancellation and metrics. Their answer is read back
from the chat chunk stream as :class:`~mlx_router.protocol.agents.Piece` values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from mlx_router.api.serving.chat import ChatJob, chat_chunks, prepare_chat
from mlx_router.api.serving.runner import Run, Runner
from mlx_router.protocol.agents import Piece, Warnings, pieces
from mlx_router.protocol.chat import ChatCompletionRequest

__all__ = ["ChatRun", "cache_writes", "count_prompt", "start_chat"]


@dataclass
class ChatRun:
    """A started chat job: admitted, so failures so far were HTTP errors."""

    chat: ChatJob
    run: Run
    prompt_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    """Prompt tokens this request writes to the prefix cache (see :func:`cache_writes`)."""

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended the answer, if one did (once :meth:`pieces` has ended)."""
        last = self.run.last.get(0)
        return last.stop_sequence if last is not None else None

    @property
    def output_tokens(self) -> int:
        """Tokens generated so far (all of them once :meth:`pieces` has ended)."""
        return self.run.usage().completion_tokens

    async def pieces(self) -> AsyncIterator[list[Piece] | None]:
        """The answer's pieces chunk by chunk (None: nothing yet, time for a keep-alive)."""
        async for chunk in chat_chunks(self.chat, self.run):
            if chunk is None:
                yield None
                continue
            found = list(pieces(chunk))
            if found:
                yield found


async def start_chat(
    runner: Runner,
    request: ChatCompletionRequest,
    warnings: Warnings,
    reasoning: Literal["enable", "disable"] | None = None,
) -> ChatRun:
    """Prepare (images loaded), load the model and get the request admitted. Tools the model
    cannot take are dropped with a warning (agent clients always send theirs), call arguments
    stream as they are written, and ``reasoning``, when given, decides whether separated
    reasoning is returned or dropped whatever the model's ``reasoning_response``."""
    chat = await _prepare(runner, request, warnings)
    chat.stream_arguments = True
    if reasoning is not None:
        chat.reasoning_response = reasoning
    run = await runner.start(chat.job)
    admission = run.admissions[0]
    block_tokens = runner.settings.defaults.prefix_cache_block_tokens
    written = cache_writes(admission.prompt_tokens, admission.cached_tokens, chat.model.prefix_cache_bytes, block_tokens)
    return ChatRun(chat, run, admission.prompt_tokens, admission.cached_tokens, written)


def cache_writes(prompt_tokens: int, cached_tokens: int, cache_bytes: int, block_tokens: int) -> int:
    """Prompt tokens a request writes to the prefix cache: every sequence that finishes leaves
    its KV there (``engine/batch.py``), all of it once it spans a block (``prefix_cache.py``
    keeps nothing of a sequence shorter than one), so the prompt tokens not read from the cache
    when the model's prefix cache is on and the prompt fills a block, else none."""
    if cache_bytes <= 0 or prompt_tokens < block_tokens:
        return 0
    return prompt_tokens - cached_tokens


async def count_prompt(runner: Runner, request: ChatCompletionRequest, warnings: Warnings) -> int:
    """The templated prompt's tokens as the worker counts them (prepared as :func:`start_chat`
    prepares it: the same tools dropped, the same images); only tokenized, never run."""
    return await runner.count((await _prepare(runner, request, warnings)).job)


async def _prepare(runner: Runner, request: ChatCompletionRequest, warnings: Warnings) -> ChatJob:
    """The chat job of an agent API's request: tools the model cannot take are dropped (agent
    clients always send theirs), and what was left out goes to ``warnings``."""
    chat = await prepare_chat(runner, request, drop_unusable_tools=True)
    for warning in chat.warnings:
        warnings.add(warning)
    return chat
