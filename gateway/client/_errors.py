"""Typed errors: the gateway's envelope (`{"error": {"code", "message", "request_id", ...}}`) as exceptions.

Two families, so callers (and the CLI's exit codes) can tell whose fault it was: `RequestError` (4xx other than
429: fix the request, sending it again will not help) and `ServiceError` (429, 5xx, no connection: the service
cannot serve now; the retryable ones are sent again by the client before they reach the caller).
"""

from __future__ import annotations

from typing import Any

import httpx


class GatewayAPIError(Exception):
    """An answer other than success. `details` holds the envelope's extra fields (e.g. `engine`, `progress`)."""

    #: whether sending the same request again may succeed (429, 503, a connection never made)
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        request_id: str | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.details = details or {}
        #: how many times the request was sent before the client gave up (set by the retry loop)
        self.attempts = 1

    def __str__(self) -> str:
        status = f"HTTP {self.status} " if self.status else ""
        request = f" (request {self.request_id})" if self.request_id else ""
        return f"{status}{self.code}: {self.message}{request}"


class RequestError(GatewayAPIError):
    """The request was refused as wrong (4xx): fix it before sending it again."""


class BadRequestError(RequestError):
    """400: malformed body, unsupported output format."""


class NotFoundError(RequestError):
    """404: unknown voice, job, segment or route."""


class ConflictError(RequestError):
    """409: a voice name taken, a job not finished, an Idempotency-Key reused with another body."""


class PayloadTooLargeError(RequestError):
    """413: an upload or body over its limit."""


class UnsupportedMediaError(RequestError):
    """415: audio that cannot be decoded, a body of the wrong type."""


class InvalidRequestError(RequestError):
    """422: invalid fields, a reference outside the engine's window, an unknown language, ..."""


class ServiceError(GatewayAPIError):
    """The service cannot serve the request now (429, 5xx, no connection)."""


class RateLimitError(ServiceError):
    """429: the queue is full; `retry_after` says when a slot is expected."""

    retryable = True


class BadGatewayError(ServiceError):
    """502: an engine answered garbage (5xx, silence, a truncated body) on every attempt the gateway made."""


class ServiceUnavailableError(ServiceError):
    """503: no engine reachable, the queue wait ran out, or the gateway cannot write its shared dir."""

    retryable = True


class GatewayTimeoutError(ServiceError):
    """504: the engine did not answer within the deadline."""


class GatewayConnectionError(ServiceError):
    """No HTTP answer: the gateway refused the connection, or it broke off mid-request."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message, code="connection_error")
        # only a connection that was never made is safe to retry: a request cut off mid-way may have been served
        self.retryable = retryable


_BY_STATUS: dict[int, type[GatewayAPIError]] = {
    400: BadRequestError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaError,
    422: InvalidRequestError,
    429: RateLimitError,
    502: BadGatewayError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date (the gateway always sends seconds)


def error_from_response(response: httpx.Response) -> GatewayAPIError:
    """The typed error for a non-2xx answer (its body must have been read)."""
    status = response.status_code
    try:
        body = response.json()
        envelope: dict[str, Any] = dict(body["error"]) if isinstance(body.get("error"), dict) else {}
    except (ValueError, AttributeError):
        envelope = {}  # not the gateway's envelope (a proxy's error page): keep the text
    code = str(envelope.pop("code", "http_error"))
    message = str(envelope.pop("message", None) or response.text[:200] or response.reason_phrase)
    request_id = envelope.pop("request_id", None) or response.headers.get("x-request-id")
    envelope.pop("retry_after", None)
    kind = _BY_STATUS.get(status) or (ServiceError if status >= 500 else RequestError)
    return kind(message, status=status, code=code, request_id=request_id, retry_after=_retry_after(response),
                details=envelope)


def error_from_transport(exc: httpx.TransportError, url: str) -> GatewayConnectionError:
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    if never_sent:
        what = "cannot connect to"
    else:
        what = "no answer in time from" if isinstance(exc, httpx.TimeoutException) else "lost the connection to"
    return GatewayConnectionError(f"{what} the gateway at {url}: {exc or type(exc).__name__}", retryable=never_sent)
