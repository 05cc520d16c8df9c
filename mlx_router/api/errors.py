"""Turning every failure into the OpenAI error envelope, in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlx_router.errors import InternalError, InvalidRequest, NotFound, RouterError
from mlx_router.protocol.anthropic import anthropic_error, is_anthropic_path

__all__ = ["error_response", "install_error_handlers", "validation_error"]

logger = logging.getLogger(__name__)


def error_response(error: RouterError, path: str = "") -> JSONResponse:
    """The error in the envelope of the API ``path`` belongs to (Anthropic's for ``/v1/messages``)."""
    body = anthropic_error(error) if is_anthropic_path(path) else error.to_dict()
    return JSONResponse(body, status_code=error.status_code, headers=error.headers or None)


def _param(loc: tuple[Any, ...]) -> str | None:
    """``("body", "messages", 0, "role")`` → ``messages[0].role``."""
    parts = [p for p in loc if p != "body"]
    # Drop union / discriminator branch names pydantic inserts (e.g. "str", "list[...]", "text").
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "[" in str(part) or str(part) in ("str", "int", "float", "bool", "dict", "list", "function-after"):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or None


def validation_error(exc: RequestValidationError, content_type: str = "application/json") -> InvalidRequest:
    """The first validation problem, phrased for a user, naming the parameter."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("Invalid request body.")
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    param = _param(loc)
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return InvalidRequest(f"The request body is not valid JSON: {detail}".rstrip(": "), code="invalid_json")
    if kind == "missing" and param is None:
        return InvalidRequest("The request body is missing; send a JSON object.", code="missing_body")
    if param is None:
        if "json" not in content_type.lower():
            return InvalidRequest(
                "The request body must be JSON sent with the header 'Content-Type: application/json'.",
                code="invalid_content_type",
            )
        return InvalidRequest("The request body must be a JSON object.", code="invalid_value")
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: {param}", param=param, code="missing_required_parameter")
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return InvalidRequest(f"Invalid value for {param}: {message}{more}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RouterError)
    async def _router_error(request: Request, exc: RouterError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.message)
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc, request.headers.get("content-type", "")), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error: RouterError = NotFound(f"Unknown route: {request.method} {request.url.path}", code="unknown_url")
        elif exc.status_code == 405:
            error = InvalidRequest(
                f"Method {request.method} is not allowed on {request.url.path}.",
                code="method_not_allowed",
                headers=dict(exc.headers or {}),
            )
            error.status_code = 405
        else:
            error = InvalidRequest(str(exc.detail))
            error.status_code = exc.status_code
        return error_response(error, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(InternalError("The server hit an internal error; see its log for details."), request.url.path)
