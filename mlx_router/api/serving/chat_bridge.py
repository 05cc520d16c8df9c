"""Running a translated request on the generation service (the agent APIs' shared part).

The Anthropic Messages and OpenAI Responses endpoints build a chat request and hand it to the
same :class:`~mlx_router.api.generation.GenerationService` as ``/v1/chat/completions``: the same
validation, media loading, batching, prefix cache, tool-call reading, reasoning splitting,
constrained decoding, limits, cancellation and metrics. Their answer is read back from the
chat chunk stream, as :class:`~mlx_router.protocol.agents.Piece` values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from mlx_router.api.generation import GenerationService, Job
from mlx_router.api.vision import attach_images
from mlx_router.protocol.agents import Piece, Warnings, pieces
from mlx_router.protocol.chat import ChatCompletionRequest

__all__ = ["ChatRun", "count_prompt", "start_chat"]


@dataclass
class ChatRun:
    """A started chat job: admitted, so failures so far were HTTP errors."""

    job: Job
    run: Any
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int = 0

    async def pieces(self, service: GenerationService) -> AsyncIterator[list[Piece] | None]:
        """The answer's pieces chunk by chunk (None: nothing yet, time for a keep-alive); the
        output token count is known once the iterator ends."""
        async for chunk in service._chat_chunks(self.job, self.run):
            if chunk is None:
                yield None
                continue
            if chunk.usage is not None:
                self.output_tokens = chunk.usage.completion_tokens
            found = list(pieces(chunk))
            if found:
                yield found


async def start_chat(service: GenerationService, chat: ChatCompletionRequest, warnings: Warnings) -> ChatRun:
    """Prepare, load images, load the model and get the request admitted."""
    job = service.prepare_chat(chat)
    for warning in await attach_images(job, chat, service.settings):
        warnings.add(warning)
    run = await service.start(job)
    admission = run.admissions[0]
    return ChatRun(job, run, admission.prompt_tokens, admission.cached_tokens)


async def count_prompt(service: GenerationService, chat: ChatCompletionRequest) -> int:
    """The templated prompt's tokens as the worker counts them: the request (given
    ``max_tokens: 1``) is admitted, which tokenizes it with the model's template, and run out;
    its prefill also leaves the prompt in the prefix cache for the request that follows."""
    started = await start_chat(service, chat, Warnings())
    async for _ in started.run.events:
        pass
    return started.prompt_tokens
