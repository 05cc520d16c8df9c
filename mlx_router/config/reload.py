"""Which settings a configuration reload may apply while serving, and which need a restart.

Pure: compares two :class:`Settings` and returns the settings to run with (the new ones, with
every restart-only key kept at its running value), the keys applied and the keys that need a
restart. What happens to models (added, removed, changed) is the manager's part of a reload.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from mlx_router.config.settings import Settings

__all__ = ["LIVE_SERVER_KEYS", "RESTART_DEFAULT_KEYS", "split_reload"]

LIVE_SERVER_KEYS = frozenset({"sse_keepalive_seconds", "worker_start_timeout"})
"""``server`` keys read at each use; every other ``server`` key is fixed once the server has
started (bind address, API key, CORS, Host list, body cap, logging, drain, metrics, status page)."""
RESTART_DEFAULT_KEYS = frozenset({"model", "spare_worker", "worker_pytorch", "embedded_model"})
"""``defaults`` keys used only at start (the preloaded, kept default model, the spare worker
process, the embedded-model import); the others apply from the next request or load."""


def split_reload(running: Settings, loaded: Settings) -> tuple[Settings, list[str], list[str]]:
    """(settings to run with, keys applied, keys that need a restart), keys as ``section.key``
    (values are never reported: some are secrets)."""
    applied: list[str] = []
    restart: list[str] = []
    sections = [name for name in Settings.model_fields if isinstance(getattr(running, name), BaseModel)]
    kept: dict[str, dict[str, Any]] = {section: {} for section in sections}
    for section in sections:  # defaults, server, media (models are the manager's part)
        old, new = getattr(running, section), getattr(loaded, section)
        for key in type(old).model_fields:
            if getattr(old, key) == getattr(new, key):
                continue
            if _needs_restart(section, key):
                restart.append(f"{section}.{key}")
                kept[section][key] = getattr(old, key)
            else:
                applied.append(f"{section}.{key}")
    effective = loaded.model_copy(
        update={section: getattr(loaded, section).model_copy(update=kept[section]) for section in sections}
    )
    return effective, applied, restart


def _needs_restart(section: str, key: str) -> bool:
    if section == "defaults":
        return key in RESTART_DEFAULT_KEYS
    if section == "server":
        return key not in LIVE_SERVER_KEYS
    return False  # media limits are read per request
