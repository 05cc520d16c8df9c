"""One exception hierarchy for everything a client can be told.

Every error the router returns goes through :class:`RouterError`: the API layer maps it once
into the OpenAI envelope ``{"error": {"message", "type", "param", "code"}}``. Messages are
written for users; they never carry filesystem paths, addresses or tracebacks.

Whether a retry can help is decided here too, once per class (``retryable``): only transient
conditions (a full queue, a model loading or giving way, a worker restarting, the server
draining) invite one, with ``Retry-After``; everything else says ``x-should-retry: false``, which
the OpenAI and Anthropic SDKs honour instead of retrying a request that cannot succeed.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "AuthenticationFailed",
    "Conflict",
    "GenerationTimeout",
    "InsufficientMemory",
    "InternalError",
    "InvalidRequest",
    "ModelLoadFailed",
    "ModelNotFound",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RouterError",
    "ServiceUnavailable",
    "WorkerCrashed",
    "redact_paths",
]

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"<>:,;()\[\]{}]+){2,}")


def _sendable(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udXXX`` escapes (UTF-8 cannot encode them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def redact_paths(text: str) -> str:
    """Replace filesystem paths in a message (library errors often name files) with ``<path>``."""
    return _PATH.sub("<path>", text)


class RouterError(Exception):
    """Base of all client-visible errors."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retryable: bool = False
    """Whether the same request may succeed later; False for every error a retry cannot fix."""
    retry_after: float | None = None
    """Seconds a client should wait before retrying (``Retry-After``); retryable errors only."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        if retry_after is not None:
            self.retry_after = retry_after
        self.headers = headers or {}

    def response_headers(self) -> dict[str, str]:
        """The HTTP headers of this error: its own, ``x-should-retry`` and, for a retryable
        error, ``Retry-After``."""
        headers = dict(self.headers)
        if not self.retryable:
            headers.pop("Retry-After", None)
        elif self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        headers["x-should-retry"] = "true" if self.retryable else "false"
        return headers

    def to_dict(self) -> dict[str, object]:
        """The OpenAI error envelope (text quoted from a request is escaped where it is not valid
        Unicode, so the envelope itself can always be sent)."""
        return {
            "error": {
                "message": _sendable(self.message),
                "type": self.error_type,
                "param": None if self.param is None else _sendable(self.param),
                "code": self.code,
            }
        }


class InvalidRequest(RouterError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(RouterError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class NotFound(RouterError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(RouterError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(RouterError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(RouterError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"
    retryable = True
    retry_after = 1.0


class ServiceUnavailable(RouterError):
    """Transient: a model loading or giving way, a worker restarting, the server draining."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"
    retryable = True
    retry_after = 5.0


class ModelLoadFailed(ServiceUnavailable):
    """A model that failed to load fails again the same way (broken or unsupported files)."""

    code = "model_load_failed"
    retryable = False


class WorkerCrashed(ServiceUnavailable):
    """The next request gets a fresh worker."""

    code = "worker_crashed"
    retry_after = 1.0


class GenerationTimeout(RouterError):
    status_code = 504
    error_type = "timeout_error"
    code = "timeout"


class InsufficientMemory(RouterError):
    status_code = 507
    error_type = "server_error"
    code = "insufficient_memory"


class InternalError(RouterError):
    status_code = 500
    error_type = "server_error"
    code = "internal_error"
