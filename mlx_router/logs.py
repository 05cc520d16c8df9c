"""Logging: console plus a rotating file, with the request id on every line."""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
from pathlib import Path

__all__ = ["REQUEST_ID", "RequestIdFilter", "setup_logging"]

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` from the current request's context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def setup_logging(
    *, debug: bool = False, log_file: str | None = None, max_bytes: int = 10 * 1024 * 1024, backups: int = 5
) -> None:
    """Configure the root logger once (idempotent: handlers installed here are replaced)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mlx_router", False):
            root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        path = Path(log_file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"))
    formatter = logging.Formatter(FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RequestIdFilter())
        handler._mlx_router = True  # type: ignore[attr-defined]  # a marker on a logging handler, read back by getattr
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "multipart"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
