"""The replicas' one connection to Redis: key names, this replica's id, and whether Redis answers now.

Every Redis call goes through `RedisLink.run`, so "Redis is down" is one error everywhere: a 503
`redis_unavailable` with Retry-After (the request lost nothing; a retry after Redis returns succeeds).
After a failure the link calls its reconnect hooks *before* the next command, so state that Redis may
have lost in a restart (this replica's engine leases, say) is re-established before anything else runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import EngineUnavailable
from gateway.settings import Settings

T = TypeVar("T")

log = logging.getLogger("gateway.coord")

#: Seconds a client is told to wait when Redis does not answer (it usually restarts in a few seconds).
REDIS_RETRY_AFTER = 2.0
#: A Redis command that takes longer than this is treated as Redis being down.
COMMAND_TIMEOUT = 2.0

_DOWN_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class RedisUnavailable(EngineUnavailable):
    """Redis does not answer: nothing can be coordinated, so the request is refused (and nothing is lost)."""

    code = "redis_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=REDIS_RETRY_AFTER)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisLink:
    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("RedisLink needs GATEWAY_REDIS_URL")
        self.prefix = settings.redis_prefix
        self.replica = settings.replica_id or default_replica_id()
        # no retries of redis-py's own: a failure must reach `run`, which re-establishes state first
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            retry_on_timeout=False,
            decode_responses=True,
        )
        self.up = False
        self.last_error: str | None = "not contacted yet"
        self._hooks: list[Callable[[], Awaitable[None]]] = []
        self._recovering = asyncio.Lock()

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` (through the raw client, not `run`) each time Redis answers again after a failure."""
        self._hooks.append(hook)

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis interaction; RedisUnavailable (503) when Redis does not answer."""
        if not self.up:
            await self._recover()
        try:
            return await call()
        except _DOWN_ERRORS as exc:
            self._went_down(exc)
            raise RedisUnavailable(f"Redis does not answer ({type(exc).__name__}); retry shortly") from None

    async def ping(self) -> bool:
        """True when Redis answers (reconnecting, with the hooks, if it did not before)."""
        try:
            await self.run(self.client.ping)
        except RedisUnavailable:
            return False
        return True

    def describe(self, *, verbose: bool = False) -> dict[str, Any]:
        """For /readyz: the error names Redis's address only when `verbose` (an admin asked), like engine URLs."""
        error = None if self.up else (self.last_error if verbose else "Redis does not answer")
        return {"up": self.up, "replica": self.replica, "last_error": error}

    async def close(self) -> None:
        await self.client.aclose()

    async def _recover(self) -> None:
        async with self._recovering:
            if self.up:
                return
            try:
                # Redis restarted (or the network dropped): every idle pooled connection is dead too, and each
                # would fail once on its next use, a 503 (or a job line's retry) per connection long after Redis
                # answers again. Close them now; they reconnect on use.
                with contextlib.suppress(*_DOWN_ERRORS):
                    await self.client.connection_pool.disconnect(inuse_connections=False)
                await self.client.ping()
                for hook in self._hooks:
                    await hook()
            except _DOWN_ERRORS as exc:
                self._went_down(exc)
                raise RedisUnavailable(f"Redis does not answer ({type(exc).__name__}); retry shortly") from None
            self.up, self.last_error = True, None
            log.info("redis answers (replica %s)", self.replica)

    def _went_down(self, exc: BaseException) -> None:
        if self.up:
            log.warning("redis stopped answering: %s", exc)
        self.up = False
        self.last_error = f"Redis does not answer: {type(exc).__name__}: {exc}"
