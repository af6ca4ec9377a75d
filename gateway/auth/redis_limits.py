"""The per-key limits of every replica together, in Redis (GATEWAY_REDIS_URL): same semantics as MemoryLimiter.

- Requests per minute: the token bucket in one Lua script (read, refill, take, write: atomic), on Redis's
  clock so replicas with skewed clocks share one bucket. Key `<prefix>:rl:rpm:<key id>` (a hash), expiring
  once the bucket would be full again (a full bucket and no key are the same thing).
- Concurrency: a sorted set `<prefix>:rl:fly:<key id>` of in-flight request tickets scored by when they
  expire (now + lease). The replica renews its own tickets every third of the lease while the requests run,
  so a replica that dies leaks nothing: its tickets lapse after GATEWAY_LEASE_SECONDS and the admission
  script drops lapsed ones before counting. After a Redis restart the reconnect hook puts the running ones back.
- Audio seconds per UTC day: INCRBYFLOAT on `<prefix>:rl:audio:<key id>:<day>`, expiring two days later.

Redis down: a limit check raises RedisUnavailable (503 with Retry-After), so a limited key is never let through
unchecked. Keys without a given limit never touch Redis for it. Audio is counted after it was handed out, so a
failure to count is logged, not raised (nothing left to refuse).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable
from contextlib import suppress

from gateway.auth.keys import Limits
from gateway.auth.limits import DAY, Decision
from gateway.coord.link import RedisLink, RedisUnavailable

log = logging.getLogger("gateway.auth")

# KEYS[1] bucket; ARGV capacity, rate per second. Returns {allowed, tokens as a string} (Lua numbers
# returned to Redis are truncated to integers, hence the string).
_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""

# KEYS[1] in-flight set; ARGV limit, ticket, lease ms. Returns {admitted, in flight before}.
_ENTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local current = redis.call('ZCARD', KEYS[1])
if current >= tonumber(ARGV[1]) then
  return {0, current}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return {1, current}
"""

# KEYS in-flight sets, ARGV[1] lease ms, ARGV[2] "XX" (renew: a ticket left meanwhile stays gone) or "PUT"
# (after a Redis restart: put back what it lost), ARGV[i+2] the ticket in KEYS[i].
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if ARGV[2] == 'XX' then
    redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 2])
  else
    redis.call('ZADD', key, now + lease, ARGV[i + 2])
  end
  redis.call('PEXPIRE', key, lease * 2)
end
return #KEYS
"""


class RedisLimiter:
    """The Limiter every replica shares; `start()` begins renewing this replica's in-flight tickets."""

    def __init__(self, link: RedisLink, lease_seconds: float, wall: Callable[[], float] = time.time) -> None:
        self._link = link
        self._lease_ms = max(1000, int(lease_seconds * 1000))
        self._wall = wall
        self._bucket = link.client.register_script(_BUCKET)
        self._enter = link.client.register_script(_ENTER)
        self._renew = link.client.register_script(_RENEW)
        self._tickets: dict[str, str] = {}  # ticket → its in-flight set: the requests running here
        self._serial = itertools.count()
        self._renewer: asyncio.Task[None] | None = None
        link.on_reconnect(lambda: self._renew_all("PUT"))

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop(), name="limiter-renewer")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with suppress(asyncio.CancelledError):
                await self._renewer

    async def take_request(self, key_id: str, limits: Limits) -> Decision:
        capacity = limits.rpm
        if capacity <= 0:
            return Decision(True)
        rate = capacity / 60.0
        key = self._link.key("rl", "rpm", key_id)
        allowed, raw = await self._link.run(lambda: self._bucket(keys=[key], args=[capacity, rate]))
        tokens = float(raw)
        reset = (capacity - tokens) / rate
        retry = 0.0 if allowed else (1.0 - tokens) / rate
        return Decision(bool(allowed), capacity, int(tokens), reset, retry)

    async def enter(self, key_id: str, limits: Limits) -> Decision:
        if limits.concurrency <= 0:
            return Decision(True)
        key = self._link.key("rl", "fly", key_id)
        ticket = f"{self._link.replica}:{next(self._serial)}"
        self._tickets[ticket] = key  # renewed from now on, even while the script runs
        try:
            admitted, current = await self._link.run(
                lambda: self._enter(keys=[key], args=[limits.concurrency, ticket, self._lease_ms]))
        except BaseException:
            self._tickets.pop(ticket, None)
            raise
        if not admitted:
            self._tickets.pop(ticket, None)
            return Decision(False, limits.concurrency, 0, retry_after=1.0)
        return Decision(True, limits.concurrency, max(0, limits.concurrency - int(current) - 1), ticket=ticket)

    async def leave(self, key_id: str, ticket: str | None) -> None:
        key = self._tickets.pop(ticket, None) if ticket else None
        if key is None or ticket is None:
            return
        with suppress(RedisUnavailable):  # else, no longer renewed, the ticket lapses within a lease
            await self._link.run(lambda: self._link.client.zrem(key, ticket))

    async def audio_left(self, key_id: str, limits: Limits) -> Decision:
        quota = limits.audio_seconds_per_day
        if quota <= 0:
            return Decision(True)
        now = self._wall()
        raw = await self._link.run(lambda: self._link.client.get(self._audio_key(key_id, now)))
        left = quota - float(raw or 0.0)
        until_midnight = DAY - now % DAY
        return Decision(left > 0, math.ceil(quota), max(0, math.floor(left)), until_midnight,
                        0.0 if left > 0 else until_midnight)

    async def add_audio(self, key_id: str, seconds: float) -> None:
        key = self._audio_key(key_id, self._wall())

        async def count() -> None:
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.incrbyfloat(key, seconds)
                pipe.expire(key, int(2 * DAY))
                await pipe.execute()

        try:
            await self._link.run(count)
        except RedisUnavailable:
            log.warning("audio seconds of key %s not counted (%.2f s): Redis does not answer", key_id, seconds)

    async def audio_used(self, key_id: str) -> float:
        raw = await self._link.run(lambda: self._link.client.get(self._audio_key(key_id, self._wall())))
        return float(raw or 0.0)

    def _audio_key(self, key_id: str, now: float) -> str:
        return self._link.key("rl", "audio", key_id, str(int(now // DAY)))

    async def _renew_all(self, mode: str = "XX") -> None:
        """Push the expiry of every request running here (raw client: also the reconnect hook)."""
        tickets = list(self._tickets.items())
        if tickets:
            await self._renew(keys=[key for _, key in tickets],
                              args=[self._lease_ms, mode, *(ticket for ticket, _ in tickets)])

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            if self._tickets:
                try:
                    await self._link.run(self._renew_all)
                except RedisUnavailable:
                    pass  # the reconnect hook puts them back once Redis answers
                except Exception:  # a surprise must not end the loop: every running request's slot needs it
                    log.exception("limiter: renewing in-flight tickets failed")
