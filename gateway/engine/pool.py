"""The engine pool: one-at-a-time engines, a bounded FIFO queue, deadlines, classified retries with failover,
cooldowns, a probe loop, model affinity and cancellation. It is the gateway's only retry loop.

Decisions worth knowing:
- Slots: at most `engine_concurrency` requests per engine, and "switch weights + synthesize" happens
  inside one slot, because an engine's model and reference cache are global (engine-protocol §6).
- Queue and selection: see selection.py (FIFO, retries at the front, least busy, affinity).
- Deadline: min(max_request_seconds, max_queue_wait + read_timeout + read_timeout_per_char × len(text)),
  shortened by the caller's timeout; each attempt gets the time that remains.
- Cancellation (client gone): a queued waiter leaves the queue at once. A non-streaming call runs in its
  own task and keeps its slot until the engine really answers (bounded by the deadline): the engine
  finishes the job anyway, and sending it another request meanwhile would put two in flight. A stream
  releases its slot when its context exits: closing the response stops the engine at the next chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_none
from tenacity.stop import stop_base

from gateway.engine.client import VoiceCloner
from gateway.engine.health import EngineState
from gateway.engine.selection import SlotQueue
from gateway.engine.stream import EngineStream
from gateway.engine.types import SynthesisRequest, SynthesisResult
from gateway.errors import EngineError, EngineTimeout, EngineUnavailable
from gateway.languages import languages_for_version
from gateway.metrics import Metrics
from gateway.settings import ModelWeights, Settings

T = TypeVar("T")

log = logging.getLogger("gateway.engine.pool")


class _DeadlineSpent(stop_base):
    """Stop retrying once the request's deadline has passed."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self.deadline


def _worth_retrying(exc: BaseException) -> bool:
    # Pool-level refusals (queue full, queue timeout, no engine) carry no engine: they are final.
    return isinstance(exc, EngineError) and exc.retryable and exc.engine is not None


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark an abandoned task's exception as seen (its caller may be gone)."""
    if not task.cancelled():
        task.exception()


class EnginePool:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._engines: list[EngineState] = []
        # The list is filled by start(); the slot queue sees the same list object.
        self._slots = SlotQueue(settings, self._engines, metrics)
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_kick = asyncio.Event()
        self._cooldown_timers: dict[str, asyncio.TimerHandle] = {}
        self._running_calls: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the clients, contact every engine once (flavour, version), start the probe loop."""
        self._engines.extend(
            EngineState(VoiceCloner(url, self._settings), self._settings.engine_concurrency)
            for url in self._settings.engines
        )
        await asyncio.gather(*(self._probe(engine, first_contact=True) for engine in self._engines))
        self._probe_task = asyncio.create_task(self._probe_loop(), name="engine-probe-loop")

    async def close(self) -> None:
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._probe_task
        for timer in self._cooldown_timers.values():
            timer.cancel()
        self._slots.close()
        for task in list(self._running_calls):
            task.cancel()
        await asyncio.gather(*self._running_calls, return_exceptions=True)
        await asyncio.gather(*(engine.client.aclose() for engine in self._engines))

    # ------------------------------------------------------------------ public API

    async def synthesize(self, req: SynthesisRequest, *, timeout: float | None = None) -> SynthesisResult:
        """Queue, pick an engine, call it, fail over on retryable errors; the result says where and how."""
        deadline = self._deadline(req, timeout)
        (_, result), attempts, queue_wait = await self._with_failover(
            req, deadline, lambda engine: self._call_detached(engine, req, deadline)
        )
        result.attempts, result.queue_wait = attempts, queue_wait
        return result

    @asynccontextmanager
    async def stream(self, req: SynthesisRequest, *, timeout: float | None = None) -> AsyncIterator[EngineStream]:
        """Like synthesize, but retries only until the first audio byte; the slot is held until exit."""
        deadline = self._deadline(req, timeout)
        (engine, (stack, stream)), attempts, queue_wait = await self._with_failover(
            req, deadline, lambda engine: self._open_stream(engine, req, deadline)
        )
        stream.attempts, stream.queue_wait = attempts, queue_wait
        error: BaseException | None = None
        try:
            yield stream
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                await stack.aclose()
            finally:
                # A consumer's own error or cancellation says nothing about the engine (recorded as neutral).
                self._finish(engine, stream.error or error, None)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "ready": any(engine.selectable(now) for engine in self._engines),
            "queue_depth": self._slots.depth,
            "max_queue": self._settings.max_queue,
            "free_slots": sum(
                engine.concurrency - engine.in_flight for engine in self._engines if engine.has_free_slot(now)
            ),
            "engines": [engine.describe(now) for engine in self._engines],
        }

    def supported_languages(self) -> frozenset[str] | None:
        versions = {engine.client.info.version for engine in self._engines if engine.client.info.version}
        if not versions:
            return None
        return frozenset(code for version in versions for code in languages_for_version(version))

    # ------------------------------------------------------------------ deadlines and retries

    def _deadline(self, req: SynthesisRequest, timeout: float | None) -> float:
        s = self._settings
        budget = min(s.max_request_seconds, s.max_queue_wait + s.read_timeout + s.read_timeout_per_char * len(req.text))
        if timeout is not None:
            budget = min(budget, timeout)
        if budget <= 0:
            raise EngineTimeout("the request's deadline had already passed")
        return time.monotonic() + budget

    @staticmethod
    def _time_left(deadline: float) -> float:
        """Seconds left for an engine call; a deadline spent in the queue is not the engine's fault, so the
        timeout raised here names no engine (and health bookkeeping ignores it)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise EngineTimeout("the request's deadline passed before the engine could be called")
        return left

    async def _with_failover(
        self, req: SynthesisRequest, deadline: float, call: Callable[[EngineState], Awaitable[T]]
    ) -> tuple[tuple[EngineState, T], int, float]:
        """The one retry loop: take a slot (another engine after a retryable failure), run `call` in it.

        Returns ((engine, call's result), attempts, seconds spent queueing).
        """
        tried: set[str] = set()
        attempts, queue_wait = 0, 0.0
        try:
            async for attempt in self._retrying(deadline):
                with attempt:
                    attempts += 1
                    engine, waited = await self._slots.acquire(
                        req.weights, frozenset(tried), deadline, retry=attempts > 1
                    )
                    queue_wait += waited
                    try:
                        return (engine, await call(engine)), attempts, queue_wait
                    except EngineError as exc:
                        if exc.retryable:
                            tried.add(engine.url)
                        raise
        except EngineError as exc:
            self._add_retry_hint(exc, attempts)
            raise
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _add_retry_hint(self, exc: EngineError, attempts: int) -> None:
        """A failure another try may cure (5xx, silence, cut-off, refused) tells the client when to come back."""
        if exc.retryable and exc.retry_after is None:
            exc.retry_after = max(1.0, self._slots.estimated_wait(1))
        exc.extra.setdefault("attempts", attempts)

    def _retrying(self, deadline: float) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self._settings.max_attempts) | _DeadlineSpent(deadline),
            retry=retry_if_exception(_worth_retrying),
            wait=wait_none(),
            reraise=True,
        )

    # ------------------------------------------------------------------ one attempt inside a slot

    async def _call_detached(self, engine: EngineState, req: SynthesisRequest, deadline: float) -> SynthesisResult:
        """Run the engine call in its own task: if our caller is cancelled, the call (and its slot) lives on
        until the engine answers, because the engine keeps working on it anyway."""
        task = asyncio.create_task(self._call_in_slot(engine, req, deadline))
        self._running_calls.add(task)
        task.add_done_callback(self._running_calls.discard)
        task.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # Our caller was not cancelled: close() cancelled the call. Say so, not "cancelled".
                raise EngineUnavailable("the gateway is shutting down") from None
            raise

    async def _call_in_slot(self, engine: EngineState, req: SynthesisRequest, deadline: float) -> SynthesisResult:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            await self._ensure_weights(engine, req.weights, deadline)
            return await engine.client.synthesize(req, timeout=self._time_left(deadline))
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(engine, error, time.monotonic() - started)

    async def _open_stream(
        self, engine: EngineState, req: SynthesisRequest, deadline: float
    ) -> tuple[AsyncExitStack, EngineStream]:
        stack = AsyncExitStack()
        try:
            await self._ensure_weights(engine, req.weights, deadline)
            stream = await stack.enter_async_context(engine.client.stream(req, timeout=self._time_left(deadline)))
        except BaseException as exc:
            try:
                await stack.aclose()
            finally:
                self._finish(engine, exc, None)
            raise
        return stack, stream

    async def _ensure_weights(self, engine: EngineState, wanted: ModelWeights | None, deadline: float) -> None:
        if wanted is None or engine.matches(wanted):
            return
        engine.weights_known = False  # until the switch has fully succeeded
        await engine.client.load_weights(wanted, timeout=self._time_left(deadline))
        engine.switched_to(wanted)

    def _finish(self, engine: EngineState, error: BaseException | None, seconds: float | None) -> None:
        """Release the slot and apply the outcome to the engine's health."""
        cooldown = engine.record(error, self._settings, time.monotonic())
        if cooldown is not None:
            log.warning("engine %s cools down for %.1fs after: %s", engine.url, cooldown, error)
            self._schedule_cooldown_end(engine, cooldown)
        if error is None and seconds is not None:
            self._slots.record_engine_seconds(seconds)
        if self._metrics is not None:
            outcome = "ok" if error is None else error.code if isinstance(error, EngineError) else "cancelled"
            self._metrics.engine_attempts.labels(engine=engine.url, outcome=outcome).inc()
            if seconds is not None:
                self._metrics.engine_seconds.labels(engine=engine.url).observe(seconds)
        self._publish(engine)
        self._slots.release(engine)

    # ------------------------------------------------------------------ health

    def _schedule_cooldown_end(self, engine: EngineState, seconds: float) -> None:
        previous = self._cooldown_timers.pop(engine.url, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._cooldown_timers[engine.url] = loop.call_later(seconds, self._cooldown_over, engine)

    def _cooldown_over(self, engine: EngineState) -> None:
        self._cooldown_timers.pop(engine.url, None)
        self._probe_kick.set()  # a down engine is probed as soon as its cooldown ends
        self._publish(engine)
        self._slots.dispatch()

    async def _probe_loop(self) -> None:
        interval = self._settings.probe_interval
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._probe_kick.wait()
            self._probe_kick.clear()
            now = time.monotonic()
            due = [engine for engine in self._engines if self._probe_due(engine, now, interval)]
            try:
                await asyncio.gather(*(self._probe(engine) for engine in due))
            except Exception:  # the loop must outlive any bug in one probe
                log.exception("engine probe failed unexpectedly")

    @staticmethod
    def _probe_due(engine: EngineState, now: float, interval: float) -> bool:
        # Never probe an engine with a request of ours in flight: api_v2 answers nothing while it works.
        if engine.in_flight or engine.probing:
            return False
        cooled_and_unchecked = (
            engine.down and engine.cooldown_until <= now and engine.last_probe < engine.cooldown_until
        )
        return cooled_and_unchecked or now - engine.last_probe >= 0.9 * interval

    async def _probe(self, engine: EngineState, *, first_contact: bool = False) -> None:
        """Probe an idle engine; the engine takes no request meanwhile (`probing` holds it)."""
        engine.probing = True
        client = engine.client
        try:
            healthy = await client.is_available()
            if healthy and engine.down:
                await client.detect_flavor()  # it may have come back as another server
                if client.info.flavor == "v2":
                    await client.probe_version()
            elif healthy and client.info.flavor == "v2" and client.info.version is None:
                await client.probe_version()
        except EngineError as exc:
            log.info("engine %s probe failed: %s", engine.url, exc)
            healthy = False
        finally:
            engine.probing = False
            engine.last_probe = time.monotonic()
        if healthy and engine.down:
            engine.recovered(first_contact=first_contact)
            log.info("engine %s is up (%s, version %s)", engine.url, client.info.flavor, client.info.version)
        elif not healthy:
            if not engine.down:
                log.warning("engine %s stopped answering probes; out of selection until it answers", engine.url)
            engine.probe_failed("does not answer GET /openapi.json; is the engine process running?")
        self._publish(engine)
        self._slots.dispatch()

    # ------------------------------------------------------------------ metrics

    def _publish(self, engine: EngineState) -> None:
        if self._metrics is not None:
            up = engine.selectable(time.monotonic())
            self._metrics.engine_up.labels(engine=engine.url).set(1 if up else 0)
            self._metrics.engine_in_flight.labels(engine=engine.url).set(engine.in_flight)
