"""One error taxonomy, rendered as one JSON envelope: {"error": {"code", "message", "request_id", ...}}."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger("gateway.errors")


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses fix the status and default code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.extra = extra


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class Conflict(GatewayError):
    status, code = 409, "conflict"


class PayloadTooLarge(GatewayError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(GatewayError):
    status, code = 415, "unsupported_media_type"


class InvalidInput(GatewayError):
    status, code = 422, "invalid_request"


class QueueFull(GatewayError):
    status, code = 429, "queue_full"


class StorageUnavailable(GatewayError):
    """The shared dir cannot be written (missing mount, read-only, full): the request lost nothing, retry later."""

    status, code = 503, "storage_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = 5.0, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kw)


class EngineError(GatewayError):
    """An engine-side failure; `retryable` tells the pool whether another attempt may help."""

    retryable = False

    def __init__(self, message: str, *, engine: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.engine = engine
        if engine is not None:
            self.extra.setdefault("engine", engine)


class EngineRejected(EngineError):
    """The engine refused the request as invalid (bad language, reference out of range): not retried."""

    status, code = 422, "engine_rejected"


class EngineBadResponse(EngineError):
    """5xx, silence placeholder, truncated or undecodable body: retried on another engine."""

    status, code = 502, "engine_bad_response"
    retryable = True


class EngineUnavailable(EngineError):
    """Connection refused/reset before any response byte, or no healthy engine: retried."""

    status, code = 503, "engine_unavailable"
    retryable = True


class EngineTimeout(EngineError):
    """No answer within the deadline. Not retried: the engine may still be busy with the request."""

    status, code = 504, "engine_timeout"


def _printable(value: Any) -> Any:
    """Client text echoed in a message may hold lone surrogates, which UTF-8 cannot encode (rendering the
    answer would fail with a 500): escape them as `\\udc00` text instead of echoing them raw."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


def envelope(request: Request, err: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": err.code, "message": _printable(err.message)}
    request_id = getattr(request.state, "request_id", None)
    body["request_id"] = request_id
    body.update(_printable(err.extra))
    headers = dict(headers or {})
    if request_id:  # set here too: a 500 is rendered outside the request-id middleware
        headers["X-Request-ID"] = request_id
    if err.retry_after is not None:
        seconds = max(1, math.ceil(err.retry_after))
        headers["Retry-After"] = str(seconds)
        body.setdefault("retry_after", seconds)
    if isinstance(err, EngineUnavailable):
        body.setdefault("service_available", False)
    return JSONResponse({"error": body}, status_code=err.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors():
        loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "form"))
        parts.append(f"{loc or 'body'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route fully matches on this path (GET, PUT and DELETE may be three routes):
    asked of each route with `matches`, so included routers answer for their own routes."""
    routes = request.app.router.routes
    allowed = [
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error (ours, FastAPI's, Starlette's, unexpected) as the one envelope."""

    @app.exception_handler(GatewayError)
    async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
        return envelope(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return envelope(request, InvalidInput(_validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        err = GatewayError(str(exc.detail), status=exc.status_code, code=codes.get(exc.status_code, "http_error"))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110 §15.5.6; Starlette names only the first route on the path
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        return envelope(request, err, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in request_id=%s", getattr(request.state, "request_id", None), exc_info=exc)
        return envelope(request, GatewayError("internal error; see the gateway log for this request_id"))
