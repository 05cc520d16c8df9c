"""Configuration reload: SIGHUP or ``POST /v1/admin/reload`` re-reads the config file the
server was started with (CLI flags and ``MLX_ROUTER_*`` variables still win, as at start).

A file that does not load or validate is rejected with the reason (logged for SIGHUP, a 400
for the endpoint) and the running configuration stays. Otherwise the manager applies the
models (:meth:`MLXModelManager.reload`), restart-only keys are reported and not applied
(:func:`mlx_router.config.reload.split_reload`), and every ``on_applied`` callback gets the new
object (the app wires the runner and ``app.state``). Reloads run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mlx_router.config.reload import split_reload
from mlx_router.config.settings import ConfigError, Settings
from mlx_router.errors import InvalidRequest, redact_paths
from mlx_router.manager.manager import MLXModelManager
from mlx_router.manager.reload_plan import ReloadedModels

__all__ = ["ConfigReloader", "ReloadReport"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadReport:
    """The answer of ``POST /v1/admin/reload`` (keys only, never values: some are secrets)."""

    models: ReloadedModels
    applied: list[str]
    needs_restart: list[str]
    status: Literal["reloaded"] = "reloaded"


class ConfigReloader:
    """Re-reads the configuration with ``load`` (None: the server was started without a file)."""

    def __init__(
        self,
        load: Callable[[], Settings] | None,
        manager: MLXModelManager,
        on_applied: Sequence[Callable[[Settings], None]] = (),
    ) -> None:
        self._load = load
        self.manager = manager
        self._on_applied = tuple(on_applied)
        """Called with the settings that now run (the runner, ``app.state``)."""
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def reload(self) -> ReloadReport:
        """Apply the file now; :class:`InvalidRequest` (nothing applied) when it is invalid."""
        if self._load is None:
            raise InvalidRequest(
                "The server was started without --config: there is no configuration file to re-read.",
                code="no_config_file",
            )
        async with self._lock:
            try:
                loaded = self._load()
                effective, applied, restart = split_reload(self.manager.settings, loaded)
                models = await self.manager.reload(effective)
            except ConfigError as exc:
                raise InvalidRequest(
                    f"The configuration was not reloaded; the running one stays. {redact_paths(str(exc))}",
                    code="invalid_config",
                ) from None
            except OSError as exc:  # e.g. the model directory became unreadable: nothing was applied
                raise InvalidRequest(
                    "The configuration was not reloaded; the running one stays. The model directory "
                    f"could not be read: {exc.strerror or exc.__class__.__name__}.",
                    code="invalid_config",
                ) from None
            for apply in self._on_applied:
                apply(effective)
        if restart:
            logger.warning("Configuration keys that need a restart were not applied: %s", ", ".join(restart))
        return ReloadReport(models, applied, restart)

    async def _reload_logged(self) -> None:
        try:
            result = await self.reload()
        except InvalidRequest as exc:
            logger.error("SIGHUP: %s", exc.message)
            return
        except Exception:
            logger.exception("SIGHUP: the configuration reload failed")
            return
        logger.info("SIGHUP: configuration reloaded: %s", result)

    def install_signal(self) -> bool:
        """Reload on SIGHUP (where the platform has it and a file was given)."""
        if self._load is None or not hasattr(signal, "SIGHUP"):
            return False
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_signal)
        return True

    def remove_signal(self) -> None:
        if hasattr(signal, "SIGHUP"):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _on_signal(self) -> None:
        logger.info("SIGHUP: re-reading the configuration")
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
