"""Pure-ASGI guards in front of every route: request id, Host allow-list, API key, body cap,
and the count of every response (route template, model, status, error) for the metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass through untouched and
client disconnects still reach the handlers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match

from mlx_router.api.serving.runner import DrainState
from mlx_router.errors import (
    AuthenticationFailed,
    InternalError,
    InvalidRequest,
    PayloadTooLarge,
    RouterError,
    ServiceUnavailable,
)
from mlx_router.logs import REQUEST_ID
from mlx_router.metrics.context import CURRENT_REQUEST, RequestRecord
from mlx_router.metrics.registry import RouterMetrics
from mlx_router.protocol.anthropic import anthropic_error, is_anthropic_path

__all__ = ["LOOPBACK_HOSTS", "RouterMiddleware", "is_loopback"]

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
OPEN_PATHS = frozenset({"/health", "/", "/ui"})
"""Open without the API key: readiness, and the status page (static: its data comes from
``/v1/status``, which needs the key)."""
METRICS_PATH = "/metrics"
ERROR_BODY_LIMIT = 16384
"""Bytes of an error response read back for the metrics' error list (error envelopes are small)."""


def is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _send_error(send: Send, error: RouterError, request_id: str, path: str = "") -> None:
    body = json.dumps(anthropic_error(error) if is_anthropic_path(path) else error.to_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.response_headers().items()]
    if isinstance(error, AuthenticationFailed):
        headers.append((b"www-authenticate", b'Bearer realm="mlx-router"'))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RouterMiddleware:
    """Request id, access log, Host check, Bearer auth, request-size cap and response metrics."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        allowed_hosts: list[str] | None,
        max_request_bytes: int,
        metrics: RouterMetrics | None = None,
        metrics_public: bool = False,
        routes: Sequence[BaseRoute] = (),
        drain: DrainState | None = None,
    ) -> None:
        self.app = app
        self.drain = drain
        """While it says draining, only the open paths answer."""
        self.api_key = api_key.encode() if api_key else None
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics
        self.routes = list(routes)
        """The app's routes, to name the route of a request refused before routing."""
        self.open_paths = OPEN_PATHS | {METRICS_PATH} if metrics_public else OPEN_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req-{uuid.uuid4().hex[:16]}"
        token = REQUEST_ID.set(request_id)
        record = RequestRecord()
        record_token = CURRENT_REQUEST.set(record)
        started = time.perf_counter()
        status_holder = {"status": 0}
        error_body = bytearray()
        error: RouterError | None = None
        try:
            error = self._check(scope) or self._draining(scope)
            if error is not None:
                status_holder["status"] = error.status_code
                await _send_error(send, error, request_id, scope.get("path", ""))
                return

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status_holder["status"] = message["status"]
                    message.setdefault("headers", [])
                    message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
                elif status_holder["status"] >= 400 and len(error_body) < ERROR_BODY_LIMIT:
                    error_body.extend(message.get("body", b"")[: ERROR_BODY_LIMIT - len(error_body)])
                await send(message)

            if _header(scope, b"content-length") is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                buffered = await self._read_capped(receive)
                if buffered is None:
                    error = PayloadTooLarge(
                        f"The request body exceeds {self.max_request_bytes} bytes (server.max_request_bytes)."
                    )
                    status_holder["status"] = error.status_code
                    await _send_error(send, error, request_id, scope.get("path", ""))
                    return
                receive = _replay(buffered, receive)
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not status_holder["status"]:  # the outermost handler answers 500 with the envelope
                status_holder["status"] = 500
                error = InternalError("The server hit an internal error; see its log for details.")
            raise
        finally:
            logger.info(
                "%s %s %d %.3fs",
                scope.get("method"),
                scope.get("path"),
                status_holder["status"],
                time.perf_counter() - started,
            )
            if self.metrics is not None:
                self._count(scope, record, status_holder["status"], error, error_body)
            CURRENT_REQUEST.reset(record_token)
            REQUEST_ID.reset(token)

    def _count(
        self, scope: Scope, record: RequestRecord, status: int, error: RouterError | None, body: bytearray
    ) -> None:
        """Count the response; an error's fields come from the envelope that was sent (HTTP
        errors) or from the stream writer (errors inside a 200 stream)."""
        assert self.metrics is not None
        sent = error.to_dict() if error is not None else _parse_error(body, status)
        failure = _error_fields(sent, status) if status >= 400 else record.stream_error
        self.metrics.response(_route_template(scope, self.routes), record.model, status, failure)

    def _draining(self, scope: Scope) -> RouterError | None:
        """While shutting down, only the open paths answer (/health with 503); the rest is refused."""
        if self.drain is not None and self.drain.draining and scope.get("path") not in self.open_paths:
            return ServiceUnavailable("The server is shutting down.", code="shutting_down")
        return None

    def _check(self, scope: Scope) -> RouterError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                return InvalidRequest("Host header not allowed.", code="host_not_allowed")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            return PayloadTooLarge(
                f"The request body is {int(length)} bytes; the limit is {self.max_request_bytes} bytes "
                "(server.max_request_bytes)."
            )
        if self.api_key is not None and scope.get("path") not in self.open_paths:
            auth = headers.get("authorization", "")
            scheme, _, presented = auth.partition(" ")
            if scheme.lower() != "bearer":  # Anthropic clients send the key as x-api-key
                presented = headers.get("x-api-key", "")
            if not hmac.compare_digest(presented.strip().encode(), self.api_key):
                return AuthenticationFailed(
                    "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
                )
        return None

    async def _read_capped(self, receive: Receive) -> list[Message] | None:
        """Read a body sent without Content-Length (chunked); None once it passes the cap."""
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            seen += len(message.get("body", b""))
            if seen > self.max_request_bytes:
                return None
            if not message.get("more_body", False):
                return messages


def _route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The matched route's path template (``/v1/models/{model_id:path}``), never the raw path,
    so that metric labels stay few whatever clients send; ``unmatched`` for unknown routes."""
    route = scope.get("route")
    if route is None:  # refused before routing (auth, Host, size), or not a FastAPI route
        route = next((r for r in routes if r.matches(scope)[0] != Match.NONE), None)
    return str(getattr(route, "path", None) or "unmatched")


def _parse_error(body: bytes | bytearray, status: int) -> dict[str, Any]:
    if status < 400:
        return {}
    try:
        parsed = json.loads(bytes(body))
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error_fields(envelope: dict[str, Any], status: int) -> tuple[int, str, str]:
    """(status, code, message) of an error envelope (a body of another shape keeps the status)."""
    error = envelope.get("error")
    if not isinstance(error, dict):
        return status, "", ""
    return status, str(error.get("code") or error.get("type") or ""), str(error.get("message") or "")


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope.get("headers", []) if k.lower() == name), None)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive() that returns the buffered body first, then defers to the real one."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
