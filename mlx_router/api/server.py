"""The uvicorn server with a graceful drain on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn

from mlx_router.api.serving.runner import Runner

__all__ = ["DrainingServer"]

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """First signal: refuse new requests (503), let running ones finish until the drain
    deadline, end the rest with an error (streams: an error event, then their end marker),
    then stop. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, runner: Runner, drain_timeout: float) -> None:
        super().__init__(config)
        self.runner = runner
        self.drain_timeout = drain_timeout
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_started = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._drain_started = True
        # Signal handlers run between bytecodes: hand the work to the loop safely.
        asyncio.get_running_loop().call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        logger.info("Shutting down: draining running requests for up to %.0f s", self.drain_timeout)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self.runner.drain(self.drain_timeout)
        finally:
            self.should_exit = True
