"""Fast units for the slot queue (gateway/engine/selection.py SlotQueue): FIFO, retries first, limits,
cancellation, dispatch; async but with no process and no socket (tests/engine_units.py builds the engines).
Part of the fast set for `make mutate`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import pytest

from gateway.engine.selection import (
    SlotQueue,
    _Waiter,
)
from gateway.errors import (
    EngineUnavailable,
    QueueFull,
)
from gateway.metrics import Metrics
from gateway.settings import ModelWeights
from tests.engine_units import FAR, SETTINGS, engines, make_engine, make_settings

# ====================================================================== selection: the queue (async, no I/O)

def waiter(loop: asyncio.AbstractEventLoop, give_up_at: float) -> _Waiter:
    return _Waiter(None, frozenset(), give_up_at, loop.create_future())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def test_fail_hopeless_waiters(loop: asyncio.AbstractEventLoop) -> None:
    now = 100.0
    cooling, down_cooling = make_engine("http://a"), make_engine("http://b", down=True)
    cooling.cooldown_until, down_cooling.cooldown_until = now + 5.0, now + 2.0  # a down engine returns via a probe
    queue = SlotQueue(SETTINGS, [cooling, down_cooling], None)
    early, exact, late, settled = waiter(loop, now + 4.0), waiter(loop, now + 5.0), waiter(loop, now + 6.0), \
        waiter(loop, now + 1.0)
    settled.future.cancel()
    queue._waiters.extend([early, exact, late, settled])
    queue._fail_hopeless_waiters(now)
    assert list(queue._waiters) == [exact, late, settled]
    error = early.future.exception()
    # Retry-After still names the soonest cooldown end, a down engine's too (it is probed right then).
    assert isinstance(error, EngineUnavailable) and error.retry_after == 2.0
    assert not exact.future.done() and not late.future.done()


def test_fail_hopeless_waiters_when_no_cooldown_will_end(loop: asyncio.AbstractEventLoop) -> None:
    now = 100.0
    ended, down = make_engine("http://a"), make_engine("http://b", down=True)
    ended.cooldown_until, down.cooldown_until = now, now + 50.0  # ended: not a rescue to wait for
    queue = SlotQueue(SETTINGS, [ended, down], None)
    patient = waiter(loop, now + 1000.0)
    queue._waiters.append(patient)
    queue._fail_hopeless_waiters(now)
    assert not queue._waiters and isinstance(patient.future.exception(), EngineUnavailable)


@pytest.mark.anyio
async def test_acquire_takes_a_free_engine_at_once() -> None:
    metrics = Metrics()
    a, b = engines(2)
    queue = SlotQueue(SETTINGS, [a, b], metrics)
    assert await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False) == (a, 0.0)
    assert (a.in_flight, b.in_flight) == (1, 0)
    sample = metrics.registry.get_sample_value
    assert sample("gateway_engine_in_flight", {"engine": "http://e0"}) == 1
    assert sample("gateway_queue_wait_seconds_count") == 1 and sample("gateway_queue_wait_seconds_sum") == 0
    assert await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False) == (b, 0.0)
    assert (a.in_flight, b.in_flight) == (1, 1)


@pytest.mark.anyio
async def test_acquire_refuses_when_closed_or_nothing_is_healthy() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    a.down = True
    with pytest.raises(EngineUnavailable) as caught:
        await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)
    assert caught.value.message.startswith("no engine is available") and caught.value.retry_after == 1.0
    a.down = False
    with pytest.raises(EngineUnavailable) as unfit:
        await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False, fits=lambda e: False)
    assert unfit.value.message.startswith("no engine is available")
    queue.close()
    with pytest.raises(EngineUnavailable) as closed:
        await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)
    assert closed.value.message == "the engine pool is closed"
    assert a.in_flight == 0


async def _queued(queue: SlotQueue, depth: int) -> None:
    """Let queued tasks run until the queue holds `depth` waiters (no clock involved)."""
    for _ in range(100):
        if queue.depth == depth:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"queue depth {queue.depth}, expected {depth}")


@pytest.mark.anyio
async def test_queue_is_fifo_and_a_retry_goes_first() -> None:
    metrics = Metrics()
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], metrics)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    order: list[str] = []

    async def take(name: str, retry: bool) -> None:
        engine, waited = await queue.acquire(None, frozenset(), deadline, retry=retry)
        assert waited >= 0.0
        order.append(name)
        queue.release(engine)

    first = asyncio.create_task(take("first", False))
    await _queued(queue, 1)
    second = asyncio.create_task(take("second", False))
    await _queued(queue, 2)
    retry = asyncio.create_task(take("retry", True))
    await _queued(queue, 3)
    assert metrics.registry.get_sample_value("gateway_queue_depth") == 3
    queue.release(a)
    await asyncio.gather(first, second, retry)
    assert order == ["retry", "first", "second"]
    assert a.in_flight == 0 and queue.depth == 0
    assert metrics.registry.get_sample_value("gateway_queue_depth") == 0
    assert metrics.registry.get_sample_value("gateway_engine_in_flight", {"engine": "http://e0"}) == 0


@pytest.mark.anyio
async def test_queue_full_refuses_first_attempts_but_not_retries() -> None:
    (a,) = engines(1)
    queue = SlotQueue(make_settings(max_queue=1), [a], None)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    waiting = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False))
    await _queued(queue, 1)
    with pytest.raises(QueueFull) as caught:
        await queue.acquire(None, frozenset(), deadline, retry=False)
    assert caught.value.message == "all engines are busy and 1 requests are already waiting"
    assert caught.value.retry_after == 4.0  # estimated_wait(2): 2 s assumed × position 2 / capacity 1
    retry = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=True))
    await _queued(queue, 2)
    retry.cancel()
    waiting.cancel()
    await asyncio.gather(retry, waiting, return_exceptions=True)
    assert queue.depth == 0 and a.in_flight == 1


@pytest.mark.anyio
async def test_queue_of_zero_refuses_at_once() -> None:
    (a,) = engines(1)
    queue = SlotQueue(make_settings(max_queue=0), [a], None)
    await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)
    with pytest.raises(QueueFull):
        await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)


@pytest.mark.anyio
@pytest.mark.parametrize(("max_queue_wait", "deadline_in", "shown"), [(0.04, 10.0, "0.0"), (30.0, 0.04, "0.0"),
                                                                       (30.0, -5.0, "0.0")])
async def test_queue_wait_is_bounded_by_the_limit_and_the_deadline(
    max_queue_wait: float, deadline_in: float, shown: str
) -> None:
    (a,) = engines(1)
    queue = SlotQueue(make_settings(max_queue_wait=max_queue_wait), [a], None)
    await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)
    async with asyncio.timeout(5):  # a wrong bound would wait 30 s
        with pytest.raises(EngineUnavailable) as caught:
            await queue.acquire(None, frozenset(), time.monotonic() + deadline_in, retry=False)
    assert caught.value.code == "queue_timeout" and caught.value.status == 503
    assert caught.value.message == f"no engine slot became free within {shown}s"
    assert caught.value.retry_after == 2.0  # estimated_wait(1): 2 s assumed × position 1 / capacity 1
    assert queue.depth == 0 and a.in_flight == 1


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_and_hands_back_a_slot_it_was_given() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    gone = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False))
    await _queued(queue, 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert queue.depth == 0 and a.in_flight == 1
    # Given the slot, then cancelled before it could run: the slot goes back.
    late = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False))
    await _queued(queue, 1)
    queue.release(a)
    assert a.in_flight == 1 and queue.depth == 0  # handed to the waiter
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert a.in_flight == 0


@pytest.mark.anyio
async def test_dispatch_serves_the_first_servable_waiter() -> None:
    a, b = engines(2)
    queue = SlotQueue(SETTINGS, [a, b], None)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    await queue.acquire(None, frozenset(), deadline, retry=False)
    only_b = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False, fits=lambda e: e is b))
    await _queued(queue, 1)
    anyone = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False))
    await _queued(queue, 2)
    queue.release(a)  # the first waiter cannot use it; the second can
    assert (await anyone)[0] is a and not only_b.done()
    queue.release(b)
    assert (await only_b)[0] is b


@pytest.mark.anyio
async def test_dispatch_drops_settled_waiters_and_does_nothing_when_closed() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    loop = asyncio.get_running_loop()
    settled = waiter(loop, time.monotonic() + 10)
    settled.future.cancel()
    fresh = waiter(loop, time.monotonic() + 10)
    queue._waiters.extend([settled, fresh])
    queue.dispatch()
    assert list(queue._waiters) == [] and fresh.future.result() is a and a.in_flight == 1
    queue.release(a)
    queue.closed = True
    late = waiter(loop, time.monotonic() + 10)
    queue._waiters.append(late)
    queue.dispatch()
    assert not late.future.done() and a.in_flight == 0


@pytest.mark.anyio
async def test_dispatch_fails_hopeless_waiters_when_nothing_is_healthy() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    loop = asyncio.get_running_loop()
    a.cooldown_until = time.monotonic() + FAR
    hopeless, rescued = waiter(loop, time.monotonic() + 1.0), waiter(loop, math.inf)
    queue._waiters.extend([hopeless, rescued])
    queue.dispatch()
    assert isinstance(hopeless.future.exception(), EngineUnavailable)
    assert list(queue._waiters) == [rescued] and not rescued.future.done()
    a.cooldown_until = time.monotonic() - FAR
    queue.dispatch()
    assert rescued.future.result() is a and queue.depth == 0


@pytest.mark.anyio
async def test_close_fails_every_waiter() -> None:
    metrics = Metrics()
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], metrics)
    loop = asyncio.get_running_loop()
    settled, open_ = waiter(loop, 0.0), waiter(loop, 0.0)
    settled.future.set_result(a)
    queue._waiters.extend([settled, open_])
    queue.close()
    assert queue.closed and queue.depth == 0
    error = open_.future.exception()
    assert isinstance(error, EngineUnavailable) and error.message == "the gateway is shutting down"
    assert settled.future.result() is a
    assert metrics.registry.get_sample_value("gateway_queue_depth") == 0


def test_has_untried_asks_the_capability_filter_about_each_engine() -> None:
    a, b = engines(2)
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue.has_untried(lambda e: e is b, frozenset(), 0.0)
    assert not queue.has_untried(lambda e: e is b, frozenset({"http://e1"}), 0.0)


@pytest.mark.anyio
async def test_acquire_at_once_honours_weights_and_capabilities() -> None:
    a, b = engines(2, concurrency=2)
    wanted = ModelWeights(sovits="s")
    b.weights = wanted
    queue = SlotQueue(SETTINGS, [a, b], None)
    deadline = time.monotonic() + 10
    assert (await queue.acquire(wanted, frozenset(), deadline, retry=False))[0] is b
    assert (await queue.acquire(None, frozenset(), deadline, retry=False, fits=lambda e: e is b))[0] is b
    assert (b.in_flight, a.in_flight) == (2, 0), "each slot taken counts"


@pytest.mark.anyio
async def test_queued_waiter_gets_the_engine_with_its_weights() -> None:
    a, b = engines(2)
    wanted = ModelWeights(sovits="s")
    b.weights = wanted
    queue = SlotQueue(SETTINGS, [a, b], None)
    deadline = time.monotonic() + 10
    a.in_flight = b.in_flight = 1
    task = asyncio.create_task(queue.acquire(wanted, frozenset(), deadline, retry=False))
    await _queued(queue, 1)
    a.in_flight = b.in_flight = 0
    queue.dispatch()  # both free: round-robin alone would pick the first
    assert (await task)[0] is b


@pytest.mark.anyio
async def test_queued_waiter_gives_up_at_its_own_time() -> None:
    """A waiter's give-up time is when it was queued plus its budget: a cooldown ending before that rescues it."""
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    before = time.monotonic()
    await queue.acquire(None, frozenset(), before + 100, retry=False)
    task = asyncio.create_task(queue.acquire(None, frozenset(), before + 100, retry=False))
    await _queued(queue, 1)
    a.cooldown_until = time.monotonic() + 20.0  # ends before the 30 s queue wait is over
    queue.dispatch()
    assert queue.depth == 1 and not task.done()
    a.cooldown_until = 0.0
    queue.release(a)
    engine, waited = await task
    assert engine is a and 0.0 <= waited <= time.monotonic() - before


@pytest.mark.anyio
async def test_interactive_requests_go_before_queued_batch_work_and_batch_is_never_refused() -> None:
    metrics = Metrics()
    (a,) = engines(1)
    queue = SlotQueue(make_settings(max_queue=1), [a], metrics)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    order: list[str] = []

    async def take(name: str, priority: str) -> None:
        engine, _ = await queue.acquire(None, frozenset(), deadline, retry=False, priority=priority)  # type: ignore[arg-type]
        order.append(name)
        queue.release(engine)

    # three job segments queue first (more than max_queue: batch is bounded by job concurrency, not refused)
    batch = [asyncio.create_task(take(f"batch{i}", "batch")) for i in range(3)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert queue.batch_depth == 3 and queue.depth == 0
    assert metrics.registry.get_sample_value("gateway_batch_queue_depth") == 3
    request = asyncio.create_task(take("request", "interactive"))
    await _queued(queue, 1)
    with pytest.raises(QueueFull):  # max_queue counts interactive waiters only
        await queue.acquire(None, frozenset(), deadline, retry=False)
    queue.release(a)
    await asyncio.gather(request, *batch)
    assert order == ["request", "batch0", "batch1", "batch2"]
    assert a.in_flight == 0 and queue.batch_depth == 0


@pytest.mark.anyio
async def test_batch_work_queues_behind_earlier_batch_work() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    earlier = _Waiter(None, frozenset(), time.monotonic() + 10, asyncio.get_running_loop().create_future())
    queue._batch.append(earlier)  # queued before the engine freed up (dispatch not yet run)
    later = asyncio.create_task(queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False, priority="batch"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert earlier.future.result() is a and not later.done()  # FIFO: the free slot went to the earlier one
    queue.close()
    with pytest.raises(EngineUnavailable):
        await later
