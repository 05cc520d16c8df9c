"""Typed configuration: ``config.json`` + ``MLX_ROUTER_*`` environment + CLI flags."""

from mlx_router.config.settings import (
    ConfigError,
    Defaults,
    ModelConfig,
    ServerSettings,
    Settings,
    load_settings,
)

__all__ = [
    "ConfigError",
    "Defaults",
    "ModelConfig",
    "ServerSettings",
    "Settings",
    "load_settings",
]
