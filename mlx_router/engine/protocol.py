"""What the router needs of a model's engine.

:class:`Engine` is the router-side handle of one loaded model: :class:`~mlx_router.engine.client.WorkerClient`
(a worker process) satisfies it, and so does the scripted fake engine of the API tests. The
manager starts, holds and stops engines; the API streams from them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from mlx_router.engine.types import (
    Admission,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    LoadInfo,
    WorkerMemory,
    WorkerOptions,
)

__all__ = ["ClientFactory", "Engine", "ExitCallback"]


class Engine(Protocol):
    """A model's engine, as the manager and the API use it."""

    @property
    def alive(self) -> bool:
        """Whether it can still serve (its process is up)."""
        ...

    @property
    def in_flight(self) -> int:
        """Sequences it is running or holding in its queue."""
        ...

    @property
    def memory(self) -> WorkerMemory | None:
        """MLX's memory in its process as last reported (None when it has not reported)."""
        ...

    @property
    def pid(self) -> int | None:
        """Its process id, for the status reports (None before it started)."""
        ...

    async def start(self, timeout: float) -> LoadInfo:
        """Load the model; raises :class:`~mlx_router.engine.client.EngineFailure` when it cannot."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Admission | GenerationChunk]:
        """The admission, then the chunks of one request; closing the iterator cancels it."""
        ...

    async def count(self, request: GenerationRequest) -> int:
        """The prompt tokens ``request`` would be admitted with; nothing runs."""
        ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """The vectors of one embedding request; cancelling the call cancels it."""
        ...

    async def stop(self, grace: float = 5.0) -> None:
        """Shut it down (killed after ``grace`` seconds)."""
        ...


ExitCallback = Callable[[Engine, str], None]
"""Called with the engine and the reason when its process ends unexpectedly."""

ClientFactory = Callable[[WorkerOptions, ExitCallback], Engine]
"""Makes the engine of one model load (real worker processes, or a test's fake)."""
