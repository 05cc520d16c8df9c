"""Whether a retry can help is decided once, by the error class, and sent as headers."""

from __future__ import annotations

import pytest

from mlx_router import errors
from mlx_router.errors import RouterError

# (class, status, invites a retry, Retry-After seconds)
TABLE: list[tuple[type[RouterError], int, bool, str | None]] = [
    (errors.InvalidRequest, 400, False, None),
    (errors.AuthenticationFailed, 401, False, None),
    (errors.NotFound, 404, False, None),
    (errors.ModelNotFound, 404, False, None),
    (errors.Conflict, 409, False, None),
    (errors.PayloadTooLarge, 413, False, None),
    (errors.Overloaded, 429, True, "1"),
    (errors.InternalError, 500, False, None),
    (errors.ServiceUnavailable, 503, True, "5"),
    (errors.ModelLoadFailed, 503, False, None),
    (errors.WorkerCrashed, 503, True, "1"),
    (errors.GenerationTimeout, 504, False, None),
    (errors.InsufficientMemory, 507, False, None),
]


@pytest.mark.parametrize(("cls", "status", "retry", "after"), TABLE, ids=[row[0].__name__ for row in TABLE])
def test_each_error_says_whether_to_retry(cls: type[RouterError], status: int, retry: bool, after: str | None) -> None:
    headers = cls("message").response_headers()
    assert cls.status_code == status
    assert headers["x-should-retry"] == ("true" if retry else "false")
    assert headers.get("Retry-After") == after


def test_every_error_class_is_in_the_table() -> None:
    classes = {getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)}
    assert classes - {RouterError} == {row[0] for row in TABLE}


def test_an_instance_may_say_otherwise() -> None:
    """A 503 that no wait can fix (every slot pinned) opts out; a wait can be given in seconds."""
    assert errors.ServiceUnavailable("x", retryable=False).response_headers() == {"x-should-retry": "false"}
    headers = errors.ServiceUnavailable("x", retry_after=2.5).response_headers()
    assert headers == {"x-should-retry": "true", "Retry-After": "3"}


def test_retry_after_given_as_a_header_is_kept_only_when_retryable() -> None:
    assert errors.Overloaded("x", headers={"Retry-After": "1"}).response_headers()["Retry-After"] == "1"
    assert "Retry-After" not in errors.InvalidRequest("x", headers={"Retry-After": "1"}).response_headers()
