"""Request plumbing shared by routes: request ids, the service container, deadlines, disconnects."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InvalidInput
from gateway.logs import RequestFacts, access_fields, access_log, request_id_var
from gateway.metrics import Metrics
from gateway.services.context import Services

T = TypeVar("T")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


class RequestContext:
    """Pure ASGI middleware: a request id on every request and response (and on its engine calls), its arrival
    time, request metrics, and the access log line (one per request, with the facts routes noted on the way).

    Pure ASGI (not BaseHTTPMiddleware) so streaming responses and disconnects pass through untouched.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrived"] = time.monotonic()  # deadlines count from here (`request_arrived`)
        state["facts"] = facts = RequestFacts()
        token = request_id_var.set(request_id)  # the engine client sends it on as X-Request-ID
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(route=path, status=str(status)).inc()
            self.metrics.request_seconds.labels(route=path).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                fields = access_fields(
                    request_id=request_id, key_id=state.get("key_id"), method=scope["method"], route=path,
                    status=status, seconds=seconds, facts=facts,
                )
                access_log.info("%s %s %d %.3fs", scope["method"], path, status, seconds, extra={"access": fields})


def request_arrived(request: Request) -> float:
    """When the request arrived (time.monotonic()), as RequestContext noted it; now if it was not noted."""
    arrived = getattr(request.state, "arrived", None)
    return float(arrived) if arrived is not None else time.monotonic()


def request_timeout(request: Request) -> float | None:
    """The client's own deadline from `X-Request-Timeout` (seconds); it can only shorten ours."""
    raw = request.headers.get("x-request-timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise InvalidInput("X-Request-Timeout must be a positive number of seconds", code="invalid_timeout")
    return value


class ClientDisconnected(Exception):
    """The client went away; nothing is sent back."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client disconnects (e.g. while queued), so no slot is wasted.

    The cancel is an anyio scope's, not `task.cancel()`: it waits out httpcore's shielded cleanup, so an
    engine call cut mid-read still closes its connection (the same rule as the deadlines in engine/).
    """
    done: list[T] = []
    failure: Exception | None = None
    gone = False
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            nonlocal gone
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            done.append(await work)
        except Exception as exc:  # kept out of the task group, which would wrap it in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()  # the work is over: stop watching
    if gone:
        raise ClientDisconnected()  # a failure the cancel caused is moot: nobody reads it
    if failure is not None:
        raise failure
    return done[0]
