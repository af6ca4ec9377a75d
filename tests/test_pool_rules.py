"""The pool's reliability rules, one test per rule, against real CPU-engine processes.

Each test names the one-line break in the product code it is meant to catch (issue 8). What reached an
engine is read at the engine (`/_stats`), not only from the pool. Cooldown lengths are checked with exact
bounds: a cooldown that started during a call made at `t0` and read `r` seconds remaining at `t1` lasted
between `r` and `r + (t1 - t0)`, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from gateway.engine.pool import EnginePool
from gateway.engine.types import SynthesisRequest, SynthesisResult
from gateway.errors import EngineBadResponse, EngineError, EngineRejected, EngineTimeout, EngineUnavailable
from gateway.settings import ModelWeights
from tests.support import (
    EngineProcess,
    engine_stats_async,
    make_reference,
    running_engine,
    set_engine_faults,
    started_pool,
    synthesis_request,
    wait_until_async,
)

pytestmark = pytest.mark.anyio

#: Quiet pools: no periodic probe takes an engine (or nudges the queue) in the middle of a rule.
QUIET = {"probe_interval": 60.0}


@pytest.fixture(scope="module")
def engines() -> Iterator[list[EngineProcess]]:
    """[v1-model engine (no Korean), v2 engine, v2 engine], shared by the module; faults reset per test."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(running_engine("--debug-routes", "--model-version", "v1")),
            stack.enter_context(running_engine("--debug-routes")),
            stack.enter_context(running_engine("--debug-routes")),
        ]


@pytest.fixture
def clean(engines: list[EngineProcess]) -> Iterator[list[EngineProcess]]:
    yield engines
    for engine in engines:
        set_engine_faults(engine.url, fault=None, delay=0.0, fault_after=0)


async def faults(engine: EngineProcess, **changes: Any) -> None:
    await asyncio.to_thread(set_engine_faults, engine.url, **changes)


async def stat(engine: EngineProcess, key: str = "requests") -> int:
    """One `/_stats` counter of an engine (`requests` counts every /tts call, probes included)."""
    return int((await engine_stats_async(engine.url))[key])


async def stat_equals(engine: EngineProcess, key: str, value: int) -> bool:
    return await stat(engine, key) == value


def entry(pool: EnginePool, index: int = 0) -> dict[str, Any]:
    described: dict[str, Any] = pool.status()["engines"][index]
    return described


async def failed_call(pool: EnginePool, req: SynthesisRequest, **kwargs: Any) -> tuple[EngineError, float]:
    """Run a synthesis that must fail; returns the error and the time the call started."""
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        await pool.synthesize(req, **kwargs)
    return caught.value, started


def assert_cooling_for(pool: EnginePool, started: float, expected: float) -> None:
    """The engine (index 0) started a cooldown of `expected` seconds during the call made at `started`."""
    described = entry(pool)
    remaining = described["cooldown_remaining"]
    elapsed = time.monotonic() - started
    assert described["state"] == "cooling_down", described
    low, high = remaining - 0.001, remaining + elapsed + 0.001  # describe() rounds to milliseconds
    assert low <= expected <= high, f"cooldown lasted {low:.3f}..{high:.3f} s, expected {expected} s"


async def wait_ready(pool: EnginePool, index: int = 0) -> None:
    await wait_until_async(lambda: entry(pool, index)["state"] == "ready")


# ---------------------------------------------------------------------- timeouts


async def test_timeout_is_not_retried_on_another_engine(clean: list[EngineProcess], ref: Path) -> None:
    """Break: `EngineTimeout.retryable = True` → the request succeeds on the second engine."""
    hung, other = clean[1], clean[2]
    await faults(hung, fault="hang")
    async with started_pool([hung, other], read_timeout=1.0, max_attempts=3, cooldown_seconds=5.0,
                            cooldown_max_seconds=5.0, **QUIET) as pool:
        before = [await stat(hung), await stat(other)]  # after start's version probes
        with pytest.raises(EngineTimeout) as caught:
            await pool.synthesize(synthesis_request(ref))
        after = [await stat(hung), await stat(other)]
        error = caught.value
        # clients see the engine's id (its place in the settings), never its URL
        assert error.status == 504 and error.engine == "e0" and "engine e0 " in error.message
        assert hung.url not in error.message and error.extra["attempts"] == 1 and error.extra["engine"] == "e0"
        assert after[1] - before[1] == 0, "the timed-out request was sent to the other engine"
        assert after[0] - before[0] == 1
        assert entry(pool, 0)["consecutive_failures"] == 1 and entry(pool, 0)["state"] == "cooling_down"
        assert entry(pool, 1)["consecutive_failures"] == 0 and entry(pool, 1)["in_flight"] == 0


# ---------------------------------------------------------------------- cooldowns

BASE, CAP = 0.5, 1.5  # doubling: 0.5, 1.0, then 2.0 capped to 1.5


@pytest.mark.parametrize(("fault", "code"), [("500", "engine_bad_response"), ("silence", "engine_silence")])
async def test_two_bad_answers_cool_the_engine_for_the_base_time(
    fault: str, code: str, clean: list[EngineProcess], ref: Path
) -> None:
    """Break: no cooldown after `cooldown_after_failures` bad answers (health.record) → still ready."""
    engine = clean[1]
    await faults(engine, fault=fault)
    async with started_pool([engine], cooldown_seconds=BASE, cooldown_max_seconds=CAP, **QUIET) as pool:
        first, _ = await failed_call(pool, synthesis_request(ref))
        assert isinstance(first, EngineBadResponse) and first.code == code
        assert entry(pool)["consecutive_failures"] == 1 and entry(pool)["state"] == "ready"
        assert entry(pool)["cooldown_remaining"] == 0
        second, started = await failed_call(pool, synthesis_request(ref))
        assert second.code == code and second.extra["attempts"] == 1
        assert entry(pool)["consecutive_failures"] == 2
        assert_cooling_for(pool, started, BASE)


async def test_cooldowns_double_up_to_the_cap_and_a_success_resets_them(
    clean: list[EngineProcess], ref: Path
) -> None:
    """Breaks: no doubling (`2.0**` → `1.0**`), no cap (no `min`), no reset on success → a length differs."""
    engine = clean[1]
    req = synthesis_request(ref)
    await faults(engine, fault="500")
    async with started_pool([engine], cooldown_seconds=BASE, cooldown_max_seconds=CAP, **QUIET) as pool:
        await failed_call(pool, req)
        for round_, expected in enumerate([BASE, 2 * BASE, CAP], start=1):  # 4 × BASE would exceed the cap
            _, started = await failed_call(pool, req)
            assert entry(pool)["consecutive_failures"] == round_ + 1
            assert_cooling_for(pool, started, expected)
            await wait_ready(pool)
        await faults(engine, fault=None)
        assert (await pool.synthesize(req)).frames > 0
        assert entry(pool)["consecutive_failures"] == 0
        await faults(engine, fault="500")
        await failed_call(pool, req)
        assert entry(pool)["state"] == "ready", "one failure after a success must not cool the engine"
        _, started = await failed_call(pool, req)
        assert_cooling_for(pool, started, BASE)


# ---------------------------------------------------------------------- rejections


def _short_reference(tmp_path: Path) -> tuple[SynthesisRequest, str, str]:
    # 2 s: the engine accepts 3-10 s; the pool has no duration check of its own (the API layer's is a setting)
    short = make_reference(tmp_path / "short.wav", seconds=2.0)
    return synthesis_request(short), "reference_duration", "requests"


def _missing_weights(tmp_path: Path, ref: Path) -> tuple[SynthesisRequest, str, str]:
    weights = ModelWeights(sovits=str(tmp_path / "missing_v2.pth"))  # only the engine can see it is missing
    return synthesis_request(ref, weights=weights), "weights_rejected", "set_weights_calls"


@pytest.mark.parametrize("case", ["short_reference", "missing_weights"])
async def test_engine_rejection_does_not_count_against_the_engine(
    case: str, clean: list[EngineProcess], ref: Path, tmp_path: Path
) -> None:
    """Break: an EngineRejected judged like a bad answer (health.judge) → failures 1 and a cooldown."""
    if case == "short_reference":
        req, code, counter = _short_reference(tmp_path)
    else:
        req, code, counter = _missing_weights(tmp_path, ref)
    pair = clean[1:]
    async with started_pool(pair, cooldown_after_failures=1, **QUIET) as pool:
        before = [await stat(engine, counter) for engine in pair]
        for _ in range(2):  # round-robin: one rejection per engine
            error, _ = await failed_call(pool, req)
            assert isinstance(error, EngineRejected) and error.code == code and error.status == 422, error
            assert error.extra["attempts"] == 1
        after = [await stat(engine, counter) for engine in pair]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1], "a rejection was retried"
        for index in range(2):
            described = entry(pool, index)
            assert described["consecutive_failures"] == 0, described
            assert described["state"] == "ready" and described["cooldown_remaining"] == 0, described


# ---------------------------------------------------------------------- attempts


async def test_max_attempts_bounds_the_failover(clean: list[EngineProcess], ref: Path) -> None:
    """Break: `max_attempts` ignored (attempts_spent never true) → the third engine is tried too."""
    for engine in clean:
        await faults(engine, fault="500")
    async with started_pool(clean, max_attempts=2, **QUIET) as pool:
        before = [await stat(engine) for engine in clean]
        error, _ = await failed_call(pool, synthesis_request(ref))
        after = [await stat(engine) for engine in clean]
    assert isinstance(error, EngineBadResponse) and error.status == 502
    assert error.extra["attempts"] == 2 and error.engine == "e1"  # clean[1], by its id
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 0], "the third engine was tried"


# ---------------------------------------------------------------------- the queue while every engine cools

COOL = 4.0


async def test_cooling_pool_fails_hopeless_waiters_at_once_and_rescues_the_others(
    clean: list[EngineProcess], ref: Path
) -> None:
    """Breaks: `_fail_hopeless_waiters` doing nothing → the short waiter ends in a queue_timeout instead;
    failing every waiter → the patient one is not rescued when the cooldown ends."""
    engine = clean[1]
    await faults(engine, fault="silence", delay=1.0)
    async with started_pool([engine], cooldown_after_failures=1, cooldown_seconds=COOL,
                            cooldown_max_seconds=COOL, **QUIET) as pool:
        before = await stat(engine)
        first = asyncio.create_task(pool.synthesize(synthesis_request(ref)))
        await wait_until_async(lambda: stat_equals(engine, "in_flight", 1))  # admitted: its fault is fixed
        # Gives up 3.5 s from now: after the first call fails (~1 s), before its cooldown ends (~1 s + COOL).
        hopeless = asyncio.create_task(pool.synthesize(synthesis_request(ref), timeout=3.5))
        patient = asyncio.create_task(pool.synthesize(synthesis_request(ref)))
        await wait_until_async(lambda: pool.status()["queue_depth"] == 2)
        await faults(engine, fault=None, delay=0.0)
        with pytest.raises(EngineBadResponse):
            await first
        with pytest.raises(EngineUnavailable) as caught:
            await hopeless
        described = entry(pool)
        assert caught.value.code == "engine_unavailable", f"not failed at once: {caught.value.code}"
        assert caught.value.retry_after is not None
        assert described["cooldown_remaining"] <= caught.value.retry_after <= COOL
        assert "cooling down" in caught.value.message
        assert described["state"] == "cooling_down" and pool.status()["queue_depth"] == 1
        rescued = await patient
        assert rescued.engine.url == engine.url and rescued.attempts == 1
        assert rescued.queue_wait >= COOL, "served before the cooldown ended"
        assert await stat(engine) - before == 2, "the hopeless waiter reached the engine"


async def test_retry_goes_to_the_front_of_the_queue(clean: list[EngineProcess], ref: Path) -> None:
    """Break: a retry appended behind the queue (`append` for `appendleft`) → the earlier waiter goes first."""
    v1_model, busy = clean[0], clean[1]
    await faults(busy, delay=2.0)
    await faults(v1_model, fault="500")
    async with started_pool([busy, v1_model], **QUIET) as pool:
        before = [await stat(busy), await stat(v1_model)]
        finished: list[str] = []

        def track(name: str, coroutine: Any) -> asyncio.Task[SynthesisResult]:
            task = asyncio.create_task(coroutine)
            task.add_done_callback(lambda _: finished.append(name))
            return task

        running = track("running", pool.synthesize(synthesis_request(ref)))  # round-robin: `busy` first
        await wait_until_async(lambda: entry(pool, 0)["in_flight"] == 1)
        # Korean: the v1-model engine cannot serve it, so it waits for `busy` (a first attempt, queued first).
        korean = track("korean", pool.synthesize(synthesis_request(ref, text="안녕하세요", text_language="ko")))
        await wait_until_async(lambda: pool.status()["queue_depth"] == 1)
        # Fails on the v1-model engine (500), then its retry waits for `busy` too.
        retried = track("retried", pool.synthesize(synthesis_request(ref)))
        await wait_until_async(lambda: pool.status()["queue_depth"] == 2)
        assert not running.done(), "the engine finished too early to test the queue order"
        results = await asyncio.gather(running, korean, retried)
        after = [await stat(busy), await stat(v1_model)]
    assert finished == ["running", "retried", "korean"], finished
    assert results[2].attempts == 2 and results[2].engine.url == busy.url
    assert results[1].attempts == 1 and results[1].engine.url == busy.url
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1]
