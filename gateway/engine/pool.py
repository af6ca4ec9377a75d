"""The engine pool: one-at-a-time engines, a bounded FIFO queue, deadlines, classified retries with failover,
cooldowns, a probe loop, model affinity and cancellation. It is the gateway's only retry loop.

Decisions worth knowing:
- Slots: at most `engine_concurrency` requests per engine, and "switch weights + synthesize" happens
  inside one slot, because an engine's model and reference cache are global (engine-protocol §6).
- Queue and selection: see selection.py (FIFO, retries at the front, least busy, affinity).
- Deadlines: each attempt gets a fair engine budget, min(max_request_seconds, read_timeout +
  read_timeout_per_char × len(text)), never shortened by the client; only running out of it counts
  against the engine. The caller's deadline (that budget + max_queue_wait, shortened by its timeout) only
  decides when the caller gets its 504: a short client timeout must not take a healthy engine out.
- Cancellation (client gone): a queued waiter leaves the queue at once. A non-streaming call runs in its
  own task and keeps its slot until the engine really answers (bounded by the deadline): the engine
  finishes the job anyway, and sending it another request meanwhile would put two in flight. A stream
  left early closes its response (the engine stops at its next chunk) and keeps the slot for a grace
  sized generously from the slowest chunk wait seen on that engine (stream.stop_grace_for says why).
- Capabilities: engines that cannot serve the request are never candidates (selection.capability_filter).
- Recovery: a request that finds no engine up first waits for a fresh probe of the down ones (shared and
  rate-limited, probing.py), so the first request after an engine (re)starts is served, not refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, wait_none

from gateway.coord.link import RedisLink
from gateway.coord.slots import RedisSlots
from gateway.engine.client import VoiceCloner
from gateway.engine.health import EngineState
from gateway.engine.probing import Prober
from gateway.engine.selection import (
    AttemptsSpent,
    Priority,
    SlotQueue,
    capability_filter,
    no_capable_engine_message,
    outcome_label,
    worth_retrying,
)
from gateway.engine.stream import EngineStream, stop_grace_for
from gateway.engine.types import SynthesisRequest, SynthesisResult
from gateway.errors import EngineError, EngineRejected, EngineTimeout, EngineUnavailable
from gateway.languages import languages_for_version
from gateway.metrics import Metrics
from gateway.settings import ModelWeights, Settings

T = TypeVar("T")

#: Least slot grace for a stream abandoned before its first audio (more if the engine's chunks were slower).
_OPEN_ABANDON_GRACE = 1.0

log = logging.getLogger("gateway.engine.pool")


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark an abandoned task's exception as seen (its caller may be gone)."""
    if not task.cancelled():
        task.exception()


class EnginePool:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, link: RedisLink | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._link = link
        self._engines: list[EngineState] = []
        # The list is filled by start(); the slot queue and the prober see the same list object. With a Redis
        # link the slots (and probes) are leases shared with the other replicas (gateway/coord/slots.py).
        self._slots = SlotQueue(settings, self._engines, metrics) if link is None else (
            RedisSlots(settings, self._engines, metrics, link)
        )
        gate = self._slots if isinstance(self._slots, RedisSlots) else None
        self._prober = Prober(
            self._engines, settings.probe_interval, settings.down_probe_interval, self._engine_changed, gate
        )
        self._probe_task: asyncio.Task[None] | None = None
        self._cooldown_timers: dict[str, asyncio.TimerHandle] = {}
        self._running_calls: set[asyncio.Task[Any]] = set()
        #: per engine URL, the slowest wait for a stream chunk seen so far: sizes the grace of an abandoned stream
        self._slowest_chunk_wait: dict[str, float] = {}
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the clients, contact every engine once (flavour, version), start the probe loop."""
        self._engines.extend(
            EngineState(VoiceCloner(url, self._settings, f"e{index}"), self._settings.engine_concurrency)
            for index, url in enumerate(self._settings.engines)
        )
        await self._slots.start()
        await self._prober.probe_all_first()
        self._probe_task = asyncio.create_task(self._prober.loop(), name="engine-probe-loop")

    async def close(self) -> None:
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._probe_task
        await self._prober.close()
        for timer in self._cooldown_timers.values():
            timer.cancel()
        self._slots.close()
        for task in list(self._running_calls):
            task.cancel()
        await asyncio.gather(*self._running_calls, return_exceptions=True)
        await self._slots.stop()
        await asyncio.gather(*(engine.client.aclose() for engine in self._engines))

    # ------------------------------------------------------------------ public API

    async def synthesize(
        self, req: SynthesisRequest, *, timeout: float | None = None, priority: Priority = "interactive"
    ) -> SynthesisResult:
        """Queue, pick an engine, call it, fail over on retryable errors; the result says where and how.
        `priority="batch"` (job segments) waits behind every interactive request."""
        deadline = self._deadline(req, timeout)
        (_, result), attempts, queue_wait = await self._with_failover(
            req, deadline, lambda engine: self._call_detached(engine, req, deadline), priority
        )
        result.attempts, result.queue_wait = attempts, queue_wait
        return result

    @asynccontextmanager
    async def stream(self, req: SynthesisRequest, *, timeout: float | None = None) -> AsyncIterator[EngineStream]:
        """Like synthesize, but retries only until the first audio byte; the slot is held until exit
        (and, for a stream left early, a short drain after it: see `_drain_and_release`)."""
        deadline = self._deadline(req, timeout)
        (engine, (stack, stream)), attempts, queue_wait = await self._with_failover(
            req, deadline, lambda engine: self._open_stream(engine, req, deadline)
        )
        stream.attempts, stream.queue_wait = attempts, queue_wait
        opened = time.monotonic()
        error: BaseException | None = None
        try:
            yield stream
        except BaseException as exc:
            error = exc
            raise
        finally:
            slowest = self._slowest_chunk_wait.get(engine.url, 0.0)
            self._slowest_chunk_wait[engine.url] = max(slowest, stream.longest_wait)
            if stream.finished or (stream.error is not None and stream.error.engine is not None):
                try:
                    await stack.aclose()
                finally:
                    seconds = time.monotonic() - opened if stream.finished else None
                    self._finish(engine, stream.error, seconds)
            else:  # left early (consumer gone or failed, caller's deadline): nothing about the engine
                outcome = outcome_label(stream.error or error) if (stream.error or error) else "cancelled"
                grace = stream.stop_grace(slowest)
                self._detach(self._drain_and_release(engine, stack, grace, outcome))

    def status(self, *, verbose: bool = False) -> dict[str, Any]:
        """Readiness facts; engines by id, their URLs only when `verbose` (operators)."""
        now = time.monotonic()
        shared = {}
        if self._link is not None:  # why a replica is not ready: Redis away, or holding grants after a restart
            hold = self._slots.hold_remaining if isinstance(self._slots, RedisSlots) else 0.0
            shared = {"redis": {**self._link.describe(verbose=verbose), "hold_seconds": round(hold, 3)}}
        return {
            "ready": any(engine.selectable(now) for engine in self._engines) and self._link_up(),
            **shared,
            "queue_depth": self._slots.depth,
            "batch_queue_depth": self._slots.batch_depth,
            "max_queue": self._settings.max_queue,
            "free_slots": sum(
                engine.concurrency - engine.in_flight for engine in self._engines if engine.has_free_slot(now)
            ),
            "engines": [engine.describe(now, verbose=verbose) for engine in self._engines],
        }

    def _link_up(self) -> bool:
        return self._link is None or self._link.up

    def supported_languages(self) -> frozenset[str] | None:
        """The union over the engines' versions (the gateway's up-front 422). None (no up-front check) when
        any engine's version is unknown (e.g. api.py): selection treats such an engine as able to serve."""
        versions = [engine.client.info.version for engine in self._engines]
        known = {version for version in versions if version}
        if not known or len(known) < len(set(versions)):
            return None
        return frozenset(code for version in known for code in languages_for_version(version))

    # ------------------------------------------------------------------ deadlines and retries

    def _deadline(self, req: SynthesisRequest, timeout: float | None) -> float:
        """The caller's deadline: when it gets its 504. It never shortens an engine call (`_fair_budget`)."""
        s = self._settings
        budget = min(s.max_request_seconds, s.max_queue_wait + self._fair_budget(req))
        if timeout is not None:
            budget = min(budget, timeout)
        if budget <= 0:
            raise EngineTimeout("the request's deadline had already passed")
        return time.monotonic() + budget

    def _fair_budget(self, req: SynthesisRequest) -> float:
        """Seconds one attempt may take on the engine; only running out of these counts against it."""
        s = self._settings
        return min(s.max_request_seconds, s.read_timeout + s.read_timeout_per_char * len(req.text))

    async def _with_failover(
        self,
        req: SynthesisRequest,
        deadline: float,
        call: Callable[[EngineState], Awaitable[T]],
        priority: Priority = "interactive",
    ) -> tuple[tuple[EngineState, T], int, float]:
        """The one retry loop: take a slot (another engine after a retryable failure), run `call` in it.

        A retry needs an untried healthy engine: repeating the one that just failed at once helps nobody,
        so without one the last engine error is final. Returns ((engine, result), attempts, queue seconds).
        """
        fits = capability_filter(req)
        if not any(fits(engine) for engine in self._engines):
            raise EngineRejected(no_capable_engine_message(req, self._engines), code="no_capable_engine")
        tried: set[str] = set()
        attempts, queue_wait = 0, 0.0

        def retry(exc: BaseException) -> bool:
            untried_left = self._slots.has_untried(fits, frozenset(tried), time.monotonic())
            return worth_retrying(exc, untried_left=untried_left)

        retrying = AsyncRetrying(
            stop=AttemptsSpent(self._settings.max_attempts, deadline),
            retry=retry_if_exception(retry),
            wait=wait_none(),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    # nothing up that fits: probe the down engines first, so a request sent right after
                    # an engine (re)starts is served, not refused
                    await self._prober.revive_if_none_up(fits, deadline)
                    engine, waited = await self._slots.acquire(
                        req.weights, frozenset(tried), deadline, retry=attempts > 1, fits=fits, priority=priority
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

    # ------------------------------------------------------------------ one attempt inside a slot

    async def _call_detached(self, engine: EngineState, req: SynthesisRequest, deadline: float) -> SynthesisResult:
        """Run the engine call in its own task with its fair budget. If our caller is cancelled or its
        deadline passes first, the call (and its slot) lives on until the engine answers, because the
        engine keeps working on it anyway; the caller's 504 names no engine, so health is untouched."""
        attempt_deadline = time.monotonic() + self._fair_budget(req)
        task = asyncio.create_task(self._call_in_slot(engine, req, attempt_deadline))
        self._running_calls.add(task)
        task.add_done_callback(self._running_calls.discard)
        task.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout_at(deadline):  # loop time is time.monotonic()
                return await asyncio.shield(task)
        except TimeoutError:
            if task.done() and not task.cancelled():
                return task.result()
            raise EngineTimeout(
                f"the request's deadline passed while engine {engine.id} was still working on it"
            ) from None
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
            return await engine.client.synthesize(req, timeout=deadline - time.monotonic())
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(engine, error, time.monotonic() - started)

    async def _open_stream(
        self, engine: EngineState, req: SynthesisRequest, deadline: float
    ) -> tuple[AsyncExitStack, EngineStream]:
        """Open a stream with the engine's fair budget; the caller's deadline only bounds the wall time."""
        stack = AsyncExitStack()
        attempt_deadline = time.monotonic() + self._fair_budget(req)
        try:
            await self._ensure_weights(engine, req.weights, attempt_deadline)
            opening = engine.client.stream(
                req, timeout=attempt_deadline - time.monotonic(), caller_deadline=deadline
            )
            stream = await stack.enter_async_context(opening)
        except BaseException as exc:
            if isinstance(exc, EngineError) and exc.engine is not None:  # the engine's answer ended it
                try:
                    await stack.aclose()
                finally:
                    self._finish(engine, exc, None)
            else:  # caller gone or its deadline passed while the engine works: same as leaving early
                # the engine is still on its first chunk, however far it got: as long as a slow chunk, at least
                slowest = self._slowest_chunk_wait.get(engine.url, 0.0)
                grace = max(_OPEN_ABANDON_GRACE, stop_grace_for(slowest, attempt_deadline - time.monotonic()))
                self._detach(self._drain_and_release(engine, stack, grace, outcome_label(exc)))
            raise
        return stack, stream

    async def _drain_and_release(
        self, engine: EngineState, stack: AsyncExitStack, grace: float, outcome: str
    ) -> None:
        """A stream left early: close the upstream response, then keep the slot a short while, because
        the engine only stops at its next chunk; a queued request must not land on it before that."""
        try:
            await stack.aclose()
            await asyncio.sleep(grace)
        finally:
            self._finish(engine, None, None, outcome=outcome)

    def _detach(self, work: Coroutine[Any, Any, None]) -> None:
        """Run slot-holding work that outlives its caller; close() cancels it (and so frees the slot)."""
        task = asyncio.create_task(work)
        self._running_calls.add(task)
        task.add_done_callback(self._running_calls.discard)
        task.add_done_callback(_retrieve)

    async def _ensure_weights(self, engine: EngineState, wanted: ModelWeights | None, deadline: float) -> None:
        if wanted is None or engine.matches(wanted):
            return
        engine.weights_known = False  # until the switch has fully succeeded
        await self._slots.switching_weights(engine)
        await engine.client.load_weights(wanted, timeout=deadline - time.monotonic())
        engine.switched_to(wanted)

    def _finish(
        self, engine: EngineState, error: BaseException | None, seconds: float | None, outcome: str | None = None
    ) -> None:
        """Release the slot and apply the outcome to the engine's health (`seconds`: a success's engine time).
        An explicit `outcome` marks a neutral end (stream left early): no health change either way."""
        was_down = engine.down
        cooldown = engine.record(error, self._settings, time.monotonic()) if outcome is None else None
        if cooldown is not None:
            log.warning("engine %s cools down for %.1fs after: %s", engine.label, cooldown, error)
            self._schedule_cooldown_end(engine, cooldown)
        elif engine.down and not was_down:
            log.warning("engine %s is unreachable (%s); out of selection until a probe sees it answer",
                        engine.label, error)
        if error is None and seconds is not None:
            self._slots.record_engine_seconds(seconds)
        if self._metrics is not None:
            self._metrics.engine_attempts.labels(engine=engine.url, outcome=outcome or outcome_label(error)).inc()
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
        self._prober.kick.set()  # a down engine is probed as soon as its cooldown ends
        self._engine_changed(engine)

    def _engine_changed(self, engine: EngineState) -> None:
        self._publish(engine)
        self._slots.dispatch()

    # ------------------------------------------------------------------ metrics

    def _publish(self, engine: EngineState) -> None:
        if self._metrics is not None:
            up = engine.selectable(time.monotonic())
            self._metrics.engine_up.labels(engine=engine.url).set(1 if up else 0)
