"""Turning every failure into the OpenAI error envelope, in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlx_router.errors import InternalError, InvalidRequest, NotFound, RouterError
from mlx_router.protocol.anthropic import AnthropicErrorResponse, anthropic_error, is_anthropic_path
from mlx_router.protocol.common import ErrorResponse

__all__ = ["ERROR_DESCRIPTIONS", "error_response", "error_responses", "install_error_handlers", "validation_error"]

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: the body, a parameter or a value that cannot be served.",
    401: "Missing or wrong API key.",
    404: "Unknown model or route.",
    413: "Request body over server.max_request_bytes.",
    429: "The model's batch and queue are full; retry after Retry-After.",
    500: "Internal error (no traceback or path in the body).",
    503: "Model loading failed, worker restarting, model slots busy or the server draining.",
    504: "A non-streaming request still waiting to start when defaults.timeout ran out.",
    507: "The model does not fit in the memory budget, or MLX ran out of memory.",
}
"""What each error status means; every one carries the OpenAI error envelope."""

logger = logging.getLogger(__name__)


def error_response(error: RouterError, path: str = "") -> JSONResponse:
    """The error in the envelope of the API ``path`` belongs to (Anthropic's for ``/v1/messages``)."""
    body = anthropic_error(error) if is_anthropic_path(path) else error.to_dict()
    return JSONResponse(body, status_code=error.status_code, headers=error.response_headers())


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: these statuses, each with the error envelope."""
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def anthropic_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of an Anthropic Messages route: these statuses, each with Anthropic's envelope."""
    return {status: {"model": AnthropicErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def _describe_errors(app: FastAPI) -> None:
    """The OpenAPI document says what the server does: validation failures are 400 with the
    error envelope, never FastAPI's 422 ``HTTPValidationError``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorResponse" not in components:
            defs = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(defs.pop("$defs", {}))
            components["ErrorResponse"] = defs
        envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", {"description": ERROR_DESCRIPTIONS[400], "content": envelope})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to change the document


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
    _describe_errors(app)

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
