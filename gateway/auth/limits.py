"""Per-key limits behind a small async interface: in-process here, shared by every replica in Redis
(gateway/auth/redis_limits.py) when GATEWAY_REDIS_URL is set.

Requests per minute: a token bucket holding `rpm` tokens, refilled at rpm/60 per second (bursts up to rpm,
then a steady rate; O(1) per key). Concurrency: an in-flight counter. Audio: seconds returned per UTC day,
counted after the fact (a request may overshoot the quota once; the next one is refused).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.auth.keys import Limits

DAY = 86400.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int = 0
    remaining: int = 0
    #: seconds until the budget is whole again (rpm) or the day turns (audio)
    reset: float = 0.0
    #: seconds to wait before a retry can pass (refused decisions only)
    retry_after: float = 0.0
    #: an admitted request's concurrency slot, handed back to `leave` (None: no slot was taken)
    ticket: str | None = None


class Limiter(Protocol):
    """Async so a shared store can answer; the in-process one never awaits (a coroutine is its only cost).
    A store that does not answer raises a GatewayError (503): never an open door, never a 500."""

    async def take_request(self, key_id: str, limits: Limits) -> Decision: ...
    async def enter(self, key_id: str, limits: Limits) -> Decision: ...
    async def leave(self, key_id: str, ticket: str | None) -> None: ...
    async def audio_left(self, key_id: str, limits: Limits) -> Decision: ...
    async def add_audio(self, key_id: str, seconds: float) -> None: ...


@dataclass
class _Bucket:
    tokens: float
    at: float


class MemoryLimiter:
    """The in-process Limiter; `clock` (monotonic) and `wall` (epoch, for the UTC day) are injectable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._buckets: dict[str, _Bucket] = {}
        self._in_flight: dict[str, int] = {}
        self._audio: dict[str, tuple[int, float]] = {}  # key → (UTC day number, seconds)

    async def take_request(self, key_id: str, limits: Limits) -> Decision:
        capacity = limits.rpm
        if capacity <= 0:
            return Decision(True)
        rate = capacity / 60.0
        now = self._clock()
        bucket = self._buckets.setdefault(key_id, _Bucket(float(capacity), now))
        bucket.tokens = min(float(capacity), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        reset = (capacity - bucket.tokens) / rate
        retry = 0.0 if allowed else (1.0 - bucket.tokens) / rate
        return Decision(allowed, capacity, int(bucket.tokens), reset, retry)

    async def enter(self, key_id: str, limits: Limits) -> Decision:
        current = self._in_flight.get(key_id, 0)
        if 0 < limits.concurrency <= current:
            return Decision(False, limits.concurrency, 0, retry_after=1.0)
        self._in_flight[key_id] = current + 1
        return Decision(True, limits.concurrency, max(0, limits.concurrency - current - 1), ticket=key_id)

    async def leave(self, key_id: str, ticket: str | None = None) -> None:
        left = self._in_flight.get(key_id, 0) - 1
        if left > 0:
            self._in_flight[key_id] = left
        else:
            self._in_flight.pop(key_id, None)

    def in_flight(self, key_id: str) -> int:
        return self._in_flight.get(key_id, 0)

    async def audio_left(self, key_id: str, limits: Limits) -> Decision:
        quota = limits.audio_seconds_per_day
        if quota <= 0:
            return Decision(True)
        now = self._wall()
        used = self._used(key_id, now)
        until_midnight = DAY - now % DAY
        left = quota - used
        return Decision(left > 0, math.ceil(quota), max(0, math.floor(left)), until_midnight,
                        0.0 if left > 0 else until_midnight)

    async def add_audio(self, key_id: str, seconds: float) -> None:
        now = self._wall()
        self._audio[key_id] = (int(now // DAY), self._used(key_id, now) + seconds)

    def audio_used(self, key_id: str) -> float:
        return self._used(key_id, self._wall())

    def _used(self, key_id: str, now: float) -> float:
        day, used = self._audio.get(key_id, (-1, 0.0))
        return used if day == int(now // DAY) else 0.0
