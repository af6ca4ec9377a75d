"""EnginePool against 1–3 real CPU-engine processes: failover, deadlines, queueing, cancellation, affinity.

`--delay` emulates GPU time; faults come from the engines themselves. Every burst checks at the engine
(`/_stats` max_in_flight) that the gateway never had two requests in flight on one engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.engine.pool import EnginePool
from gateway.engine.stream import STOP_GRACE_MAX
from gateway.engine.types import SynthesisResult
from gateway.errors import EngineTimeout, EngineUnavailable, QueueFull
from gateway.metrics import Metrics
from gateway.settings import ModelWeights
from tests.support import (
    EngineProcess,
    engine_stats_async,
    running_engine,
    set_engine_faults,
    started_pool,
    synthesis_request,
    wait_until_async,
)

pytestmark = pytest.mark.anyio

DELAY = "0.3"


@pytest.fixture(scope="module")
def engines() -> Iterator[list[EngineProcess]]:
    """Three healthy engines shared by the tests that do not break them (faults are reset after each)."""
    with ExitStack() as stack:
        yield [stack.enter_context(running_engine("--debug-routes", "--delay", DELAY)) for _ in range(3)]


@pytest.fixture
def clean(engines: list[EngineProcess]) -> Iterator[list[EngineProcess]]:
    yield engines
    for engine in engines:
        set_engine_faults(engine.url, fault=None, delay=float(DELAY), fault_after=0)


async def wait_for(condition: Any, seconds: float = 15.0) -> None:
    """Poll a condition, sync or async (correctness, not speed: the limit is generous)."""
    await wait_until_async(condition, timeout=seconds)


async def in_flight_equals(engine: EngineProcess, count: int) -> bool:
    """Does the engine itself count `count` requests in flight? (read without blocking the event loop)"""
    return bool((await engine_stats_async(engine.url))["in_flight"] == count)


def engine_states(pool: EnginePool) -> dict[str, str]:
    return {entry["url"]: entry["state"] for entry in pool.status(verbose=True)["engines"]}


# ---------------------------------------------------------------------- start-up and status


async def test_start_reports_engines_and_languages(clean: list[EngineProcess]) -> None:
    async with started_pool(clean) as pool:
        await wait_for(lambda: pool.status()["free_slots"] == 3)  # a probe may hold an engine for a moment
        status = pool.status()
        assert status["ready"] and status["queue_depth"] == 0
        assert {(e["flavor"], e["version"], e["state"]) for e in status["engines"]} == {("v2", "v2", "ready")}
        languages = pool.supported_languages()
        assert languages is not None and {"en", "ko", "yue"} <= languages


async def test_burst_never_puts_two_requests_on_one_engine(clean: list[EngineProcess], ref: Path) -> None:
    async with started_pool(clean) as pool:
        before = [(await engine_stats_async(engine.url))["requests"] for engine in clean]  # after start's probes
        results = await asyncio.gather(*(pool.synthesize(synthesis_request(ref)) for _ in range(12)))
    after = [await engine_stats_async(engine.url) for engine in clean]
    assert all(engine["max_in_flight"] == 1 for engine in after)
    served = {engine.url: after[i]["requests"] - before[i] for i, engine in enumerate(clean)}
    assert sum(served.values()) == 12 and all(count >= 2 for count in served.values()), served
    assert {result.engine.url for result in results} == set(served)
    assert all(result.attempts == 1 for result in results)


# ---------------------------------------------------------------------- failover


@pytest.mark.parametrize("fault", ["500", "silence"])
async def test_retryable_fault_fails_over_to_another_engine(fault: str, clean: list[EngineProcess], ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean[0].url, fault=fault)
    metrics = Metrics()
    async with started_pool(clean[:2], metrics) as pool:  # round-robin starts with the first engine
        result = await pool.synthesize(synthesis_request(ref))
        assert result.attempts == 2 and result.engine.url == clean[1].url
        assert pool.status()["engines"][0]["consecutive_failures"] == 1
    code = "engine_bad_response" if fault == "500" else "engine_silence"
    sample = metrics.registry.get_sample_value
    assert sample("gateway_engine_attempts_total", {"engine": clean[0].url, "outcome": code}) == 1
    assert sample("gateway_engine_attempts_total", {"engine": clean[1].url, "outcome": "ok"}) == 1
    assert sample("gateway_engine_up", {"engine": clean[1].url}) == 1


async def test_retry_waits_for_an_untried_engine_while_newcomers_use_the_free_one(
    clean: list[EngineProcess], ref: Path
) -> None:
    busy, flaky = clean[0], clean[1]
    await asyncio.to_thread(set_engine_faults, busy.url, delay=6.0)  # ≫ the newcomer, even on a loaded CPU
    await asyncio.to_thread(set_engine_faults, flaky.url, fault="500")
    async with started_pool([busy, flaky], probe_interval=60.0) as pool:  # no probe nudges the queue
        first = asyncio.create_task(pool.synthesize(synthesis_request(ref)))  # round-robin: the busy engine
        await wait_for(lambda: pool.status()["engines"][0]["in_flight"] == 1)
        second = asyncio.create_task(pool.synthesize(synthesis_request(ref)))  # fails on flaky, then waits for busy
        await wait_for(lambda: pool.status()["engines"][1]["consecutive_failures"] == 1)
        assert pool.status()["queue_depth"] == 1
        await asyncio.to_thread(set_engine_faults, flaky.url, fault=None)
        # The waiting retry must not block a newcomer that the free engine can serve (FIFO among the servable).
        third = await pool.synthesize(synthesis_request(ref))
        assert third.engine.url == flaky.url and third.attempts == 1
        assert not first.done(), "the newcomer waited for the busy engine"
        retried = await second
        assert retried.attempts == 2 and retried.engine.url == busy.url, "the retry repeated the failed engine"
        assert (await first).engine.url == busy.url


async def test_killed_engine_during_burst_loses_no_request(ref: Path) -> None:
    with ExitStack() as stack:
        group = [stack.enter_context(running_engine("--debug-routes", "--delay", DELAY)) for _ in range(3)]
        async with started_pool(group) as pool:
            tasks = [asyncio.create_task(pool.synthesize(synthesis_request(ref))) for _ in range(18)]
            await wait_for(lambda: in_flight_equals(group[0], 1))
            group[0].kill()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            status = pool.status()
        survivors = [await engine_stats_async(engine.url) for engine in group[1:]]
    results = [outcome for outcome in outcomes if isinstance(outcome, SynthesisResult)]
    assert len(results) == 18, f"with two engines left and a deep queue, every request should succeed: {outcomes}"
    assert any(result.attempts == 2 for result in results), "the request on the killed engine was retried"
    assert {result.engine.url for result in results if result.attempts == 2} <= {e.url for e in group[1:]}
    assert status["engines"][0]["state"] in ("cooling_down", "down")
    assert all(engine["max_in_flight"] == 1 for engine in survivors)


async def test_restarted_engine_returns_via_the_probe(ref: Path) -> None:
    with running_engine("--debug-routes") as engine:
        async with started_pool([engine]) as pool:
            engine.kill()
            with pytest.raises(EngineUnavailable) as refused:
                await pool.synthesize(synthesis_request(ref))
            assert refused.value.retryable
            assert engine_states(pool)[engine.url] in ("cooling_down", "down")
            with pytest.raises(EngineUnavailable) as no_engine:  # nothing healthy: 503 at once, with a hint
                await pool.synthesize(synthesis_request(ref))
            # The 0.5 s cooldown (or, once over, the 0.2 s probe interval) is under the 1 s floor.
            assert no_engine.value.retry_after == 1.0
            await asyncio.to_thread(engine.restart)
            await wait_for(lambda: engine_states(pool)[engine.url] == "ready")
            assert pool.status()["engines"][0]["consecutive_failures"] == 0
            result = await pool.synthesize(synthesis_request(ref))
            assert result.engine.url == engine.url and result.frames > 0


# ---------------------------------------------------------------------- deadlines and the queue


async def test_hung_engine_times_out_and_cools_down(ref: Path) -> None:
    with running_engine("--debug-routes", "--fault", "hang") as engine:
        # Only the engine's own (fair) budget running out counts against it: read_timeout, not a client timeout.
        async with started_pool([engine], read_timeout=1.0, cooldown_seconds=5.0, cooldown_max_seconds=5.0) as pool:
            started = time.monotonic()
            with pytest.raises(EngineTimeout) as timed_out:
                await pool.synthesize(synthesis_request(ref))
            assert timed_out.value.engine == "e0"
            assert time.monotonic() - started < 5.0, "the deadline was not enforced"
            read_at = time.monotonic()
            status = pool.status()
            entry = status["engines"][0]
            assert entry["state"] == "cooling_down" and entry["cooldown_remaining"] > 0
            assert entry["in_flight"] == 0 and not status["ready"]
            with pytest.raises(EngineUnavailable) as refused:
                await pool.synthesize(synthesis_request(ref))
            # Retry-After is what is left of the cooldown when refused: at most what status showed before.
            remaining, elapsed = entry["cooldown_remaining"], time.monotonic() - read_at
            assert refused.value.retry_after is not None
            assert remaining - elapsed - 0.001 <= refused.value.retry_after <= remaining + 0.001


async def test_queue_overflow_is_429_with_retry_after(clean: list[EngineProcess], ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean[0].url, delay=1.0)
    async with started_pool(clean[:1], max_queue=2) as pool:
        tasks = [asyncio.create_task(pool.synthesize(synthesis_request(ref))) for _ in range(5)]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [outcome for outcome in outcomes if isinstance(outcome, QueueFull)]
    served = [outcome for outcome in outcomes if isinstance(outcome, SynthesisResult)]
    assert len(served) == 3 and len(refused) == 2, outcomes
    # No request measured yet: 2 s assumed per request × queue position 3 / one slot.
    assert [(error.status, error.retry_after) for error in refused] == [(429, 6.0), (429, 6.0)]
    assert max(result.queue_wait for result in served) > 0


async def test_queue_wait_limit_is_503_queue_timeout(clean: list[EngineProcess], ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean[0].url, delay=2.0)
    async with started_pool(clean[:1], max_queue_wait=0.5) as pool:
        first = asyncio.create_task(pool.synthesize(synthesis_request(ref)))
        await wait_for(lambda: pool.status()["free_slots"] == 0)
        with pytest.raises(EngineUnavailable) as caught:
            await pool.synthesize(synthesis_request(ref))
        # No request measured yet: 2 s assumed per request × queue position 1 / one slot.
        assert caught.value.code == "queue_timeout" and caught.value.retry_after == 2.0
        assert pool.status()["queue_depth"] == 0
        assert (await first).frames > 0


# ---------------------------------------------------------------------- cancellation


async def test_cancelled_waiter_leaves_the_queue(clean: list[EngineProcess], ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean[0].url, delay=1.0)
    async with started_pool(clean[:1]) as pool:
        before = (await engine_stats_async(clean[0].url))["requests"]
        running = asyncio.create_task(pool.synthesize(synthesis_request(ref)))
        await wait_for(lambda: pool.status()["free_slots"] == 0)
        queued = asyncio.create_task(pool.synthesize(synthesis_request(ref)))
        await wait_for(lambda: pool.status()["queue_depth"] == 1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.status()["queue_depth"] == 0
        assert (await running).frames > 0
        await wait_for(lambda: pool.status()["free_slots"] == 1)
    after = (await engine_stats_async(clean[0].url))["requests"]
    assert after - before == 1, "the cancelled request reached the engine"


async def test_cancelled_call_keeps_its_slot_until_the_engine_is_done(clean: list[EngineProcess], ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean[0].url, delay=1.0)
    async with started_pool(clean[:1]) as pool:
        abandoned = asyncio.create_task(pool.synthesize(synthesis_request(ref)))
        await wait_for(lambda: in_flight_equals(clean[0], 1))
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert pool.status()["engines"][0]["in_flight"] == 1, "slot released while the engine still works"
        follow_up = await pool.synthesize(synthesis_request(ref))  # waits for the abandoned call, then runs
        assert follow_up.frames > 0 and follow_up.queue_wait > 0
        assert pool.status()["engines"][0]["in_flight"] == 0
    assert (await engine_stats_async(clean[0].url))["max_in_flight"] == 1


# ---------------------------------------------------------------------- streaming


async def test_stream_fails_over_before_the_first_byte(clean: list[EngineProcess], ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean[0].url, fault="silence")
    async with started_pool(clean[:2]) as pool:
        async with pool.stream(synthesis_request(ref)) as stream:
            assert stream.engine.url == clean[1].url and stream.attempts == 2
            assert pool.status()["engines"][1]["in_flight"] == 1  # the slot is held while we stream
            pcm = b"".join([chunk async for chunk in stream.chunks()])
        assert len(pcm) > stream.sample_rate  # more than half a second of int16 audio
        assert pool.status()["engines"][1]["in_flight"] == 0


# ---------------------------------------------------------------------- model affinity


async def test_affinity_avoids_needless_weight_switches(clean: list[EngineProcess], ref: Path, tmp_path: Path) -> None:
    voices = {}
    for name in ("a", "b"):
        path = tmp_path / f"voice_{name}_v2.pth"
        path.write_bytes(b"weights")
        voices[name] = ModelWeights(sovits=str(path))
    pair = clean[:2]
    before = sum([(await engine_stats_async(e.url))["set_weights_calls"] for e in pair])
    served: dict[str, set[str]] = {"a": set(), "b": set()}
    # No periodic probes: an engine being probed is busy, and a request would take the other one and switch.
    async with started_pool(pair, probe_interval=60.0) as pool:
        for _ in range(2):  # concurrent pairs
            a, b = await asyncio.gather(
                pool.synthesize(synthesis_request(ref, weights=voices["a"])),
                pool.synthesize(synthesis_request(ref, weights=voices["b"])),
            )
            served["a"].add(a.engine.url)
            served["b"].add(b.engine.url)
        for name in "aabbab":  # sequential: plain round-robin would switch on most of these
            served[name].add((await pool.synthesize(synthesis_request(ref, weights=voices[name]))).engine.url)
        plain = await pool.synthesize(synthesis_request(ref))  # no weights: happy anywhere, no switch
        assert plain.frames > 0
        loaded = {entry["url"]: entry["loaded_weights"] for entry in pool.status(verbose=True)["engines"]}
    switches = sum([(await engine_stats_async(e.url))["set_weights_calls"] for e in pair]) - before
    assert switches == 2, f"{switches} weight switches for 2 voices on 2 engines"
    assert len(served["a"]) == len(served["b"]) == 1 and served["a"] != served["b"]
    assert loaded[next(iter(served["a"]))] == {"gpt": None, "sovits": voices["a"].sovits}


async def test_stream_abandoned_mid_body_in_another_task_releases_the_engine(
    clean: list[EngineProcess], ref: Path
) -> None:
    # The HTTP layer enters the stream in the request task and drains it in the response task, which is
    # cancelled (anyio, level-triggered) when the client disconnects.
    engine = clean[0]
    text = " ".join(f"Sentence {n} of a long text that keeps the engine streaming for a while." for n in range(10))
    async with started_pool([engine]) as pool:
        # A first stream on a slowed engine, read to its end: the pool remembers the engine's slowest wait.
        await asyncio.to_thread(set_engine_faults, engine.url, delay=2.5)
        async with pool.stream(synthesis_request(ref)) as slow:
            assert [chunk async for chunk in slow.chunks()]
        await asyncio.to_thread(set_engine_faults, engine.url, delay=0.0)
        await wait_for(lambda: pool.status()["free_slots"] == 1)

        stack = AsyncExitStack()
        stream = await stack.enter_async_context(pool.stream(synthesis_request(ref, text=text)))
        first_chunk = asyncio.Event()

        async def drain() -> None:
            try:
                async for _chunk in stream.chunks():
                    first_chunk.set()
            finally:
                await stack.aclose()

        async with anyio.create_task_group() as group:
            group.start_soon(drain)
            await first_chunk.wait()
            group.cancel_scope.cancel()
        # The slot is kept for a drain (the engine stops only at its next chunk), then freed; the queued
        # follow-up must not reach the engine while it is still finishing the abandoned stream.
        follow_up = await pool.synthesize(synthesis_request(ref))
        assert follow_up.frames > 0
        # The drain is sized from the slowest chunk wait seen on the engine, this stream's or an earlier one's,
        # with a wide margin: a loaded engine stopped up to ~1.9 x that after we closed (a lower bound only).
        least = min(2 * max(slow.longest_wait, stream.longest_wait), STOP_GRACE_MAX / 2)
        assert follow_up.queue_wait >= least, (follow_up.queue_wait, slow.longest_wait, stream.longest_wait)
        assert pool.status()["engines"][0]["in_flight"] == 0
        # free again (a probe of the now idle engine may hold it for a moment, so wait rather than assert at once)
        await wait_for(lambda: pool.status()["free_slots"] == 1)
        await wait_for(lambda: in_flight_equals(engine, 0))
    assert (await engine_stats_async(engine.url))["max_in_flight"] == 1
