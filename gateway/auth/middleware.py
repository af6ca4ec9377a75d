"""The auth middleware: key → 401, limits → 429, X-RateLimit-* headers; the admin scope is a route dependency.

Pure ASGI, so a request's concurrency slot is held until its response (a stream included) has been sent.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.access import Account, Auth, RateLimited, Unauthorized, current_account
from gateway.auth.limits import Decision
from gateway.errors import GatewayError, envelope

#: no key needed: probes, the docs and the web page (its API calls then need one). /metrics too unless
#: GATEWAY_METRICS_REQUIRE_KEY: Prometheus usually scrapes from inside the network.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                        "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/static-offline-docs/")


def presented_key(scope: Scope) -> str | None:
    """`Authorization: Bearer KEY` (what the OpenAI SDK sends) or `X-API-Key: KEY`."""
    headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return api_key or None


def _rate_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    if decision.limit <= 0:  # no per-minute limit on this key: nothing to announce
        return []
    return [
        (b"x-ratelimit-limit", str(decision.limit).encode()),
        (b"x-ratelimit-remaining", str(decision.remaining).encode()),
        (b"x-ratelimit-reset", str(math.ceil(decision.reset)).encode()),
    ]


class AuthMiddleware:
    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    def _is_open(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path == "/metrics":
            return self.auth.metrics_open
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = self.auth
        state = scope.setdefault("state", {})
        state["auth_open"] = auth.open
        state["key_id"] = state["account"] = None
        raw = presented_key(scope)
        key = auth.keys.lookup(raw) if raw and not auth.open else None
        account = Account(key, auth.limiter) if key is not None else None
        if account is not None:
            state["key_id"], state["account"] = account.key.id, account
        if auth.open or self._is_open(scope):
            await self.app(scope, receive, send)  # a key on an open route only identifies (readyz?verbose=1)
            return
        if account is None:
            why = "missing API key" if raw is None else "unknown API key"
            await self._refuse(scope, receive, send, Unauthorized(
                f"{why}: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"),
                [(b"www-authenticate", b'Bearer realm="sovits-gateway"')])
            return
        limits = account.key.limits
        try:
            rate = await auth.limiter.take_request(account.key.id, limits)
        except GatewayError as down:  # the shared store does not answer: 503, the door stays shut
            await self._refuse(scope, receive, send, down, [])
            return
        headers = _rate_headers(rate)
        if not rate.allowed:
            err = RateLimited(f"key {account.key.id!r} is over its {limits.rpm} requests per minute",
                              retry_after=rate.retry_after, limit="requests_per_minute")
            await self._refuse(scope, receive, send, err, headers)
            return
        try:
            slot = await auth.limiter.enter(account.key.id, limits)
        except GatewayError as down:
            await self._refuse(scope, receive, send, down, headers)
            return
        if not slot.allowed:
            err = RateLimited(f"key {account.key.id!r} already has {limits.concurrency} requests in flight",
                              retry_after=slot.retry_after, limit="concurrency")
            await self._refuse(scope, receive, send, err, headers)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start" and headers:
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        token = current_account.set(account)
        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            current_account.reset(token)
            await auth.limiter.leave(account.key.id, slot.ticket)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, err: GatewayError,
                      headers: list[tuple[bytes, bytes]]) -> None:
        response = envelope(Request(scope), err)
        response.raw_headers.extend(headers)
        await response(scope, receive, send)
