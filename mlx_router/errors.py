"""One exception hierarchy for everything a client can be told.

Every error the router returns goes through :class:`RouterError`: the API layer maps it once
into the OpenAI envelope ``{"error": {"message", "type", "param", "code"}}``. Messages are
written for users; they never carry filesystem paths, addresses or tracebacks.
"""

from __future__ import annotations

import re

__all__ = [
    "RouterError",
    "InvalidRequest",
    "AuthenticationFailed",
    "NotFound",
    "ModelNotFound",
    "PayloadTooLarge",
    "Conflict",
    "Overloaded",
    "ModelLoadFailed",
    "ServiceUnavailable",
    "WorkerCrashed",
    "GenerationTimeout",
    "InsufficientMemory",
    "InternalError",
    "redact_paths",
]

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"<>:,;()\[\]{}]+){2,}")


def redact_paths(text: str) -> str:
    """Replace filesystem paths in a message (library errors often name files) with ``<path>``."""
    return _PATH.sub("<path>", text)


class RouterError(Exception):
    """Base of all client-visible errors."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, object]:
        """The OpenAI error envelope."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
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


class ServiceUnavailable(RouterError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class ModelLoadFailed(ServiceUnavailable):
    code = "model_load_failed"


class WorkerCrashed(ServiceUnavailable):
    code = "worker_crashed"


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
