"""What the service installers (``install-launchd.sh``, ``install-systemd.sh``) ask of Python.

The installers need the configured port and drain deadline before the service's virtualenv
exists (to refuse a busy port before installing anything, and to write stop timeouts longer than
the drain), so this file runs on a bare ``python3`` and uses the standard library only. When
mlx-router is importable (the install's virtualenv, a development checkout) the server's own
loader reads the config, so a broken file is refused with the server's own message; otherwise the
JSON is read directly and missing keys take :data:`FALLBACK_DEFAULTS`, which the tests keep equal
to ``ServerSettings``' defaults.

Commands::

    service_helper.py settings CONFIG    print "PORT BIND_IP HEALTH_HOST DRAIN_S STOP_TIMEOUT_S"
    service_helper.py port-free IP PORT  exit 0 when IP:PORT can be listened on, else 1 and why
    service_helper.py health HOST PORT   exit 0 when GET /health answers 200, else 1 and the answer
"""

from __future__ import annotations

import json
import math
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "FALLBACK_DEFAULTS",
    "STOP_MARGIN_S",
    "ServiceSettings",
    "health",
    "health_host",
    "main",
    "port_problem",
    "read_settings",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

#: ``server`` defaults used when mlx-router cannot be imported (a bare ``python3``).
FALLBACK_DEFAULTS: dict[str, Any] = {"ip": "127.0.0.1", "port": 8800, "drain_timeout": 30.0}

#: Seconds a service manager waits beyond the drain deadline before SIGKILL: uvicorn's own
#: shutdown and the workers' model unloads happen after the drain.
STOP_MARGIN_S = 30


class ServiceSettings(NamedTuple):
    """The few settings a service definition depends on."""

    port: int
    ip: str
    drain_timeout: float

    @property
    def stop_timeout(self) -> int:
        """Whole seconds a stop may take: the drain deadline plus :data:`STOP_MARGIN_S`."""
        return math.ceil(self.drain_timeout) + STOP_MARGIN_S


class SettingsError(Exception):
    """The config cannot be used; the message says why and what to fix."""


def _server_loader() -> Any | None:
    """``load_settings`` of mlx-router, or None when it cannot be imported here."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))
    try:
        from mlx_router.config.settings import load_settings
    except ImportError:
        return None
    return load_settings


def read_settings(config: Path) -> ServiceSettings:
    """The service settings of ``config``, as the service (whose environment has no
    ``MLX_ROUTER_*`` variables) will see them."""
    load_settings = _server_loader()
    if load_settings is not None:
        from mlx_router.config.settings import ConfigError

        try:
            server = load_settings(config, environ={}).server
        except ConfigError as exc:
            raise SettingsError(str(exc)) from None
        return ServiceSettings(server.port, server.ip, server.drain_timeout)
    return _read_json_settings(config)


def _read_json_settings(config: Path) -> ServiceSettings:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read {config}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(
            f"{config} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    server = data.get("server", {}) if isinstance(data, dict) else None
    if not isinstance(server, dict):
        raise SettingsError(f"{config} must hold a JSON object whose 'server' is an object")
    values = {**FALLBACK_DEFAULTS, **{k: v for k, v in server.items() if k in FALLBACK_DEFAULTS}}
    port, ip, drain = values["port"], values["ip"], values["drain_timeout"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise SettingsError(f"server.port in {config} must be a whole number from 1 to 65535 (got {port!r})")
    if not isinstance(ip, str) or not ip:
        raise SettingsError(f"server.ip in {config} must be an address such as 127.0.0.1 (got {ip!r})")
    if isinstance(drain, bool) or not isinstance(drain, (int, float)) or not 0 <= drain <= 3600:
        raise SettingsError(f"server.drain_timeout in {config} must be seconds from 0 to 3600 (got {drain!r})")
    return ServiceSettings(port, ip, float(drain))


def health_host(ip: str) -> str:
    """Where a local client reaches a server bound to ``ip`` (wildcards mean loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(ip, ip)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_problem(ip: str, port: int) -> str | None:
    """Why the server could not listen on ``ip:port``, or None when it could."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn does: connections lingering in TIME_WAIT do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    # Some systems let a specific address bind beside a wildcard listener; a connection tells.
    try:
        socket.create_connection((health_host(ip), port), timeout=1).close()
    except OSError:
        return None
    return "another program accepts connections there"


def health(host: str, port: int) -> tuple[bool, str]:
    """(True, "200 ok") when the server's ``/health`` says it can serve, else (False, why)."""
    url = f"http://{_address(host, port)}/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(url, timeout=5) as response:
            return response.status == 200, f"{response.status} ok"
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read() or b"{}").get("reason")
        except (ValueError, AttributeError):
            reason = None
        return False, f"{exc.code} {reason or exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        return False, f"no answer ({why})"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else ""
    try:
        if command == "settings" and len(args) == 2:
            s = read_settings(Path(args[1]))
            print(s.port, s.ip, health_host(s.ip), f"{s.drain_timeout:g}", s.stop_timeout)
            return 0
        if command == "port-free" and len(args) == 3:
            problem = port_problem(args[1], int(args[2]))
            if problem:
                print(problem)
            return 1 if problem else 0
        if command == "health" and len(args) == 3:
            ok, answer = health(args[1], int(args[2]))
            print(answer)
            return 0 if ok else 1
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main())
