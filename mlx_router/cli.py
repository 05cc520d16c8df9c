"""``mlx-router`` / ``python main.py``: parse flags, load config, refuse unsafe binds, serve."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any

from mlx_router import __version__
from mlx_router.config.settings import ConfigError, Settings, load_settings

__all__ = ["build_parser", "main", "settings_from_args"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-router",
        description="OpenAI-compatible server that routes requests to many MLX models. "
        "Precedence: CLI flags > MLX_ROUTER_* environment > config file > built-in defaults.",
    )
    parser.add_argument("-v", "--version", action="version", version=f"mlx-router {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config.json to read (default: none, built-in defaults)")
    parser.add_argument("--ip", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8800)")
    parser.add_argument("--max-tokens", type=int, dest="max_tokens", help="default max_tokens per request")
    parser.add_argument("--timeout", type=float, help="seconds a non-streaming request may run, then it returns what it generated (streams have no wall-clock limit)")
    parser.add_argument("--debug", action="store_true", default=None, help="debug logging")
    parser.add_argument("--model", help="model to preload and keep resident while room allows (defaults.model)")
    parser.add_argument("--model-dir", dest="model_dir", help="model directory (overrides MLX_MODEL_DIR)")
    parser.add_argument("--api-key-file", dest="api_key_file", help="file whose first line is the API key")
    parser.add_argument("--log-file", dest="log_file", help="rotating log file (default logs/mlx_router.log)")
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="allow binding a non-loopback address without an API key (anyone who can reach it can use it)",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration, print it and exit"
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server = {
        "ip": args.ip,
        "port": args.port,
        "debug": args.debug,
        "api_key_file": args.api_key_file,
        "log_file": args.log_file,
        "allow_unauthenticated": args.allow_unauthenticated,
    }
    defaults = {
        "max_tokens": args.max_tokens,
        "timeout": args.timeout,
        "model": args.model,
        "model_directory": args.model_dir,
    }
    return {
        "server": {k: v for k, v in server.items() if v is not None},
        "defaults": {k: v for k, v in defaults.items() if v is not None},
    }


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config, overrides=_overrides(args))
    settings.resolve_api_key()  # a missing or empty key file is a configuration error
    check_bind_safety(settings)
    check_default_model(settings)
    return settings


def check_default_model(settings: Settings) -> None:
    """``defaults.model`` must name a configured or discovered model (or the embedded one)."""
    from mlx_router.manager.manager import EMBEDDED_MODEL_ID
    from mlx_router.manager.registry import build_registry

    default = settings.defaults.model
    if not default or default == EMBEDDED_MODEL_ID:
        return
    known = build_registry(settings.models, settings.model_dir)
    if default not in known:
        raise ConfigError(
            f"defaults.model: {default!r} is not a known model. Known models: "
            f"{', '.join(sorted(known)) or 'none'}. Fix defaults.model, or add the model under "
            "'models' or to the model directory."
        )


def check_bind_safety(settings: Settings) -> None:
    """A non-loopback bind needs an API key unless the operator explicitly opts out."""
    from mlx_router.api.middleware import is_loopback

    if is_loopback(settings.server.ip) or settings.server.allow_unauthenticated:
        return
    if settings.resolve_api_key() is None:
        raise ConfigError(
            f"Refusing to listen on {settings.server.ip} without an API key: anyone who can reach "
            "this address could use the server. Set server.api_key or server.api_key_file in the "
            "config, or MLX_ROUTER_API_KEY / MLX_ROUTER_API_KEY_FILE, or pass --api-key-file; "
            "or bind 127.0.0.1; or pass --allow-unauthenticated if you really mean it."
        )


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket for the server (IPv4 or IPv6, as ``host`` is)."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"mlx-router: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(settings.model_dump_json(indent=2, exclude={"server": {"api_key"}}))
        return 0

    import uvicorn

    from mlx_router.api.app import create_app
    from mlx_router.api.server import DrainingServer
    from mlx_router.logs import setup_logging

    server = settings.server
    setup_logging(
        debug=server.debug, log_file=server.log_file, max_bytes=server.log_max_bytes, backups=server.log_backup_count
    )
    logger.info("mlx-router %s starting on http://%s:%d", __version__, server.ip, server.port)
    try:  # before any model loads: a busy port is reported at once, not after the default model
        listener = listen(server.ip, server.port)
    except OSError as exc:
        print(
            f"mlx-router: cannot listen on {server.ip}:{server.port}: {exc.strerror or exc}. "
            "Is another server using it? Stop it, or set server.port (or --port).",
            file=sys.stderr,
        )
        return 1
    try:
        # SIGHUP and POST /v1/admin/reload re-read the file, under the same flags and environment.
        app = create_app(settings, reload_settings=(lambda: settings_from_args(args)) if args.config else None)
    except ConfigError as exc:
        print(f"mlx-router: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=server.ip,
        port=server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn_server = DrainingServer(config, app.state.runner, server.drain_timeout)
    try:
        uvicorn_server.run(sockets=[listener])
    except ConfigError as exc:
        print(f"mlx-router: {exc}", file=sys.stderr)
        return 2
    return 0 if uvicorn_server.started else 1
