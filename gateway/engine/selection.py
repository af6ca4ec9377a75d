"""Engine slots and the bounded FIFO queue in front of them: who gets which engine, and when.

- Strict FIFO among waiters that a free engine can serve; a retry goes to the *front* (it has already
  waited its turn) and is not counted against `max_queue`.
- Two classes: interactive requests go before queued batch work (dubbing job segments), whatever their
  arrival order; batch waiters are bounded by their jobs' concurrency, so they are not counted against
  `max_queue` and never refused with 429 (a client's request must not be refused because a job is queued).
- Capabilities: only engines that can serve the request's languages / reference-free mode are candidates.
- Selection: healthy engines not yet tried by this request (a tried one only when every healthy engine
  has been tried), then matching weights, then least busy, then fewest recent failures, then round-robin.
  A request whose weights match a *busy* engine does not wait for it: it takes a free engine and switches
  (holding capacity idle for affinity would trade throughput for fewer switches).
- A waiter that is cancelled or times out leaves the queue at once, handing back a slot it was just given.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

from tenacity import RetryCallState
from tenacity.stop import stop_base

from gateway.engine.health import EngineState
from gateway.engine.types import SynthesisRequest
from gateway.errors import EngineError, EngineUnavailable, QueueFull
from gateway.languages import languages_for_version
from gateway.metrics import Metrics
from gateway.settings import ModelWeights, Settings

_EWMA_ALPHA = 0.2
#: Engine time assumed for Retry-After estimates before any request has been measured.
_INITIAL_ENGINE_SECONDS = 2.0


Fits = Callable[[EngineState], bool]
Priority = Literal["interactive", "batch"]


def any_engine(engine: EngineState) -> bool:
    return True


def capability_filter(req: SynthesisRequest) -> Fits:
    """Which engines can serve `req`: a known model version must accept both languages, and a
    reference-free request (empty prompt text) or one with extra references needs api_v2 (api.py cannot do
    without a prompt, and its `inp_refs` is broken: engine-protocol §2.3)."""
    languages = {req.text_language, req.prompt_language}

    def fits(engine: EngineState) -> bool:
        info = engine.client.info
        if (not req.prompt_text or req.aux_reference_paths) and info.flavor == "v1":
            return False
        return info.version is None or languages <= set(languages_for_version(info.version))

    return fits


def worth_retrying(error: BaseException, *, untried_left: bool) -> bool:
    """Retry only a retryable failure of a named engine (pool-level refusals carry no engine and are
    final), and only when a healthy engine that has not failed this request is left: repeating the one
    that just failed at once helps nobody."""
    return isinstance(error, EngineError) and error.retryable and error.engine is not None and untried_left


def attempts_spent(attempts: int, max_attempts: int, now: float, deadline: float) -> bool:
    """Stop after `max_attempts` attempts, or once the request's deadline has passed."""
    return attempts >= max_attempts or now >= deadline


class AttemptsSpent(stop_base):
    """Stop retrying after `max_attempts` attempts or once the request's deadline has passed."""

    def __init__(self, max_attempts: int, deadline: float) -> None:
        self.max_attempts = max_attempts
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return attempts_spent(retry_state.attempt_number, self.max_attempts, time.monotonic(), self.deadline)


def outcome_label(error: BaseException | None) -> str:
    """Metric label: ok, the engine error's code, cancelled (caller gone), or error (a bug of ours)."""
    if error is None:
        return "ok"
    if isinstance(error, EngineError):
        return error.code
    return "cancelled" if isinstance(error, asyncio.CancelledError) else "error"


def no_capable_engine_message(req: SynthesisRequest, engines: Sequence[EngineState]) -> str:
    known = ", ".join(f"{e.id} ({e.client.info.flavor}, {e.client.info.version or '?'})" for e in engines)
    need = "reference-free synthesis (api_v2 only), " if not req.prompt_text else ""
    if req.aux_reference_paths:
        need += "extra references (aux_audio: api_v2 only), "
    return (
        f"no engine can serve this request: it needs {need}text language {req.text_language!r} and prompt "
        f"language {req.prompt_language!r}; engines: {known}"
    )


@dataclass(eq=False)
class _Waiter:
    weights: ModelWeights | None
    tried: frozenset[str]
    give_up_at: float
    future: asyncio.Future[EngineState]
    fits: Fits = any_engine


class SlotQueue:
    """Hands engine slots to requests; the pool tells it when slots free up or engines change state."""

    def __init__(self, settings: Settings, engines: Sequence[EngineState], metrics: Metrics | None) -> None:
        self._settings = settings
        self._engines = engines
        self._metrics = metrics
        self._waiters: deque[_Waiter] = deque()  # interactive, FIFO (retries at the front)
        self._batch: deque[_Waiter] = deque()  # batch, FIFO; served only when no interactive waiter can be
        self._round_robin = 0
        self._engine_seconds_ewma: float | None = None
        self.closed = False

    @property
    def depth(self) -> int:
        """Interactive waiters (what max_queue bounds and Retry-After estimates count)."""
        return len(self._waiters)

    @property
    def batch_depth(self) -> int:
        return len(self._batch)

    async def start(self) -> None:
        """Nothing to set up in-process (RedisSlots connects and starts its loops)."""

    async def stop(self) -> None:
        """Nothing to flush in-process (RedisSlots sends the last releases)."""

    async def switching_weights(self, engine: EngineState) -> None:
        """Nothing to tell in-process: the engine's state lives here (RedisSlots shares it)."""

    def record_engine_seconds(self, seconds: float) -> None:
        previous = self._engine_seconds_ewma
        self._engine_seconds_ewma = seconds if previous is None else previous + _EWMA_ALPHA * (seconds - previous)

    def has_untried(self, fits: Fits, tried: frozenset[str], now: float) -> bool:
        """Is a healthy engine left that can serve the request and has not failed it yet?"""
        return any(e.selectable(now) and fits(e) and e.url not in tried for e in self._engines)

    async def acquire(
        self,
        weights: ModelWeights | None,
        tried: frozenset[str],
        deadline: float,
        *,
        retry: bool,
        fits: Fits = any_engine,
        priority: Priority = "interactive",
    ) -> tuple[EngineState, float]:
        """Take a slot now or wait in the queue; returns the engine and the seconds waited.

        Raises QueueFull (429, interactive only), or EngineUnavailable (503) when no engine is healthy or
        the wait exceeds min(max_queue_wait, time left before the deadline) — code "queue_timeout".
        """
        if self.closed:
            raise EngineUnavailable("the engine pool is closed")
        now = time.monotonic()
        if not any(engine.selectable(now) and fits(engine) for engine in self._engines):
            raise self.no_engine_error(now)
        batch = priority == "batch"
        ahead = self._waiters or (batch and self._batch)  # batch work never jumps interactive waiters
        if not ahead and (engine := self._pick(weights, tried, now, fits)) is not None:
            self._take(engine)
            self._observe_wait(0.0)
            return engine, 0.0
        if not batch and not retry and len(self._waiters) >= self._settings.max_queue:
            raise QueueFull(
                f"all engines are busy and {len(self._waiters)} requests are already waiting",
                retry_after=self.estimated_wait(len(self._waiters) + 1),
            )
        budget = max(0.0, min(self._settings.max_queue_wait, deadline - now))
        waiter = _Waiter(weights, tried, now + budget, asyncio.get_running_loop().create_future(), fits)
        line = self._batch if batch else self._waiters
        if retry:
            line.appendleft(waiter)
        else:
            line.append(waiter)
        # A free engine may suit this waiter even though the ones ahead are waiting for other engines.
        self.dispatch()
        try:
            async with asyncio.timeout(budget):
                engine = await waiter.future
        except BaseException as exc:
            self._leave(waiter)
            if isinstance(exc, TimeoutError):
                raise EngineUnavailable(
                    f"no engine slot became free within {budget:.1f}s",
                    code="queue_timeout",
                    retry_after=self.estimated_wait(len(self._waiters) + 1),
                ) from None
            raise
        waited = time.monotonic() - now
        self._observe_wait(waited)
        return engine, waited

    def release(self, engine: EngineState) -> None:
        engine.in_flight -= 1
        self._in_flight_changed(engine)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand free slots to waiters, interactive ones first, FIFO in each class (call whenever a slot or an
        engine frees up)."""
        if self.closed or not (self._waiters or self._batch):
            return
        now = time.monotonic()
        if not any(engine.selectable(now) for engine in self._engines):
            self._fail_hopeless_waiters(now)
        for line in (self._waiters, self._batch):
            for waiter in list(line):
                if not any(engine.has_free_slot(now) for engine in self._engines):
                    break
                if waiter.future.done():
                    line.remove(waiter)
                    continue
                engine = self._pick(waiter.weights, waiter.tried, now, waiter.fits)
                if engine is not None:
                    line.remove(waiter)
                    self._take(engine)
                    waiter.future.set_result(engine)
        self._queue_changed()

    def close(self) -> None:
        self.closed = True
        for waiter in (*self._waiters, *self._batch):
            if not waiter.future.done():
                waiter.future.set_exception(EngineUnavailable("the gateway is shutting down"))
        self._waiters.clear()
        self._batch.clear()
        self._queue_changed()

    def no_engine_error(self, now: float) -> EngineUnavailable:
        """503 with Retry-After = time until the soonest cooldown ends (≥ 1 s; 1 s if none is cooling)."""
        cooling = [e.cooldown_remaining(now) for e in self._engines if e.cooldown_remaining(now) > 0]
        down = sum(1 for e in self._engines if e.down)
        # a down engine is probed every down_probe_interval and by every request: worth asking again soon
        retry_after = max(1.0, min(cooling, default=self._settings.down_probe_interval))
        details = "; ".join(
            f"{e.id} is {e.state(now)}" + (f" ({e.last_error})" if e.last_error else "") for e in self._engines
        )
        return EngineUnavailable(
            f"no engine is available ({len(cooling)} cooling down, {down} down of {len(self._engines)}): "
            f"{details}; retry in {math.ceil(retry_after)}s",
            retry_after=retry_after,
            engines=[e.id for e in self._engines],
        )

    def estimated_wait(self, position: int) -> float:
        """Retry-After for a refused or timed-out waiter: recent engine time × queue position / capacity."""
        per_request = self._engine_seconds_ewma or _INITIAL_ENGINE_SECONDS
        now = time.monotonic()
        capacity = sum(engine.concurrency for engine in self._engines if engine.selectable(now))
        return max(1.0, per_request * position / max(1, capacity))

    # ------------------------------------------------------------------ internals

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter gave up (cancelled or timed out); hand back a slot it was given in the meantime."""
        for line in (self._waiters, self._batch):
            with suppress(ValueError):
                line.remove(waiter)
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            self.release(future.result())
        else:
            future.cancel()
        self._queue_changed()

    def _fail_hopeless_waiters(self, now: float) -> None:
        """No engine is healthy: fail the waiters that no cooldown ends in time to rescue.
        A down engine only returns via a probe, at no predictable time."""
        returns = [e.cooldown_until for e in self._engines if not e.down and e.cooldown_until > now]
        soonest = min(returns, default=math.inf)
        for line in (self._waiters, self._batch):
            for waiter in list(line):
                if soonest > waiter.give_up_at and not waiter.future.done():
                    line.remove(waiter)
                    waiter.future.set_exception(self.no_engine_error(now))

    def _pick(
        self, weights: ModelWeights | None, tried: frozenset[str], now: float, fits: Fits = any_engine
    ) -> EngineState | None:
        healthy = [engine for engine in self._engines if engine.selectable(now) and fits(engine)]
        untried = [engine for engine in healthy if engine.url not in tried]
        candidates = [engine for engine in (untried or healthy) if engine.has_free_slot(now)]
        if not candidates:
            return None
        count = len(self._engines)
        position = {engine.url: index for index, engine in enumerate(self._engines)}

        def rank(engine: EngineState) -> tuple[bool, int, int, int]:
            turn = (position[engine.url] - self._round_robin) % count
            return not engine.matches(weights), engine.in_flight, engine.recent_failure_count(now), turn

        best = min(candidates, key=rank)
        self._round_robin = (position[best.url] + 1) % count
        return best

    def _take(self, engine: EngineState) -> None:
        engine.in_flight += 1
        self._in_flight_changed(engine)

    def _in_flight_changed(self, engine: EngineState) -> None:
        if self._metrics is not None:
            self._metrics.engine_in_flight.labels(engine=engine.url).set(engine.in_flight)

    def _queue_changed(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(self.depth)
            self._metrics.batch_queue_depth.set(self.batch_depth)

    def _observe_wait(self, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.queue_wait_seconds.observe(seconds)
