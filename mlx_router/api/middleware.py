"""Pure-ASGI guards in front of every route: request id, Host allow-list, API key, body cap.

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
from typing import Any, Awaitable, Callable

from mlx_router.errors import AuthenticationFailed, InvalidRequest, PayloadTooLarge, RouterError, ServiceUnavailable
from mlx_router.logs import REQUEST_ID

__all__ = ["RouterMiddleware", "is_loopback", "LOOPBACK_HOSTS"]

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
OPEN_PATHS = frozenset({"/health"})


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


async def _send_error(send: Send, error: RouterError, request_id: str) -> None:
    body = json.dumps(error.to_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if isinstance(error, AuthenticationFailed):
        headers.append((b"www-authenticate", b'Bearer realm="mlx-router"'))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RouterMiddleware:
    """Request id, access log, Host check, Bearer auth and request-size cap."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        allowed_hosts: list[str] | None,
        max_request_bytes: int,
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req-{uuid.uuid4().hex[:16]}"
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status_holder = {"status": 0}
        try:
            error = self._check(scope) or _draining(scope)
            if error is not None:
                status_holder["status"] = error.status_code
                await _send_error(send, error, request_id)
                return

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status_holder["status"] = message["status"]
                    message.setdefault("headers", [])
                    message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
                await send(message)

            if _header(scope, b"content-length") is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                buffered = await self._read_capped(receive)
                if buffered is None:
                    error = PayloadTooLarge(
                        f"The request body exceeds {self.max_request_bytes} bytes (server.max_request_bytes)."
                    )
                    status_holder["status"] = error.status_code
                    await _send_error(send, error, request_id)
                    return
                receive = _replay(buffered, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            logger.info(
                "%s %s %d %.3fs",
                scope.get("method"),
                scope.get("path"),
                status_holder["status"],
                time.perf_counter() - started,
            )
            REQUEST_ID.reset(token)

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
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, presented = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self.api_key):
                return AuthenticationFailed(
                    "Missing or invalid API key: send 'Authorization: Bearer <key>'."
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


def _draining(scope: Scope) -> RouterError | None:
    """While shutting down, only /health answers (with 503); everything else is refused."""
    app = scope.get("app")
    service = getattr(getattr(app, "state", None), "generation", None)
    if service is not None and service.draining and scope.get("path") not in OPEN_PATHS:
        return ServiceUnavailable("The server is shutting down.", code="shutting_down", headers={"Retry-After": "5"})
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope.get("headers", []) if k.lower() == name), None)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive() that returns the buffered body first, then defers to the real one."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
