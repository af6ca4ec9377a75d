"""Recovery and health at the pool level (issue 9, items 4, 8, 10), against real engine processes and sockets.

- A request that finds no engine up probes the down ones first (one shared probe, rate-limited).
- A killed engine is down, not cooling: the first request after it is back is served.
- An engine's refusal of a malformed text never counts against its health.
- The probe loop logs state changes only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.engine.pool import EnginePool
from gateway.engine.probing import REVIVE_GAP
from gateway.errors import EngineBadResponse, EngineRejected, EngineUnavailable
from tests.support import (
    free_port,
    running_engine,
    started_pool,
    synthesis_request,
    wait_until_async,
)

pytestmark = pytest.mark.anyio

#: No background probe of a down engine during a test: only requests can bring it back quickly.
NO_BACKGROUND = {"probe_interval": 60.0, "down_probe_interval": 60.0}


def entry(pool: EnginePool) -> dict[str, Any]:
    described: dict[str, Any] = pool.status()["engines"][0]
    return described


@asynccontextmanager
async def counting_listener(port: int) -> AsyncIterator[list[float]]:
    """A socket on `port` that accepts and closes every connection at once (an engine that is not there
    yet but whose port is bound), recording when each connection came: one probe each."""
    arrivals: list[float] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrivals.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        yield arrivals
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------- item 4: on-demand probes


async def test_a_request_probes_a_down_engine_once_for_everyone_and_at_a_bounded_rate(ref: Path) -> None:
    """Break: no single flight (each request probes) → 20 probes for the burst; no rate limit → one per
    request in the stream; no on-demand probe at all → no probe during the burst."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with counting_listener(port) as arrivals, started_pool([url], **NO_BACKGROUND) as pool:
        assert len(arrivals) == 1 and entry(pool)["state"] == "down"  # the first contact
        await asyncio.sleep(REVIVE_GAP)
        burst_at = time.monotonic()
        outcomes = await asyncio.gather(
            *(pool.synthesize(synthesis_request(ref)) for _ in range(20)), return_exceptions=True
        )
        burst = [t for t in arrivals if t >= burst_at]
        assert all(isinstance(o, EngineUnavailable) and o.engine is None for o in outcomes), outcomes
        assert len(burst) == 1, f"{len(burst)} probes for one burst of 20 requests"
        # Five clients retrying at once for 2 s: at most one probe per REVIVE_GAP (+1 for the edges).
        stream_at = time.monotonic()
        refused = 0

        async def client() -> None:
            nonlocal refused
            while time.monotonic() - stream_at < 2.0:
                with pytest.raises(EngineUnavailable):
                    await pool.synthesize(synthesis_request(ref))
                refused += 1

        await asyncio.gather(*(client() for _ in range(5)))
        probes = len([t for t in arrivals if t >= stream_at])
        assert probes <= 2.0 / REVIVE_GAP + 1, f"{probes} probes for {refused} requests in 2 s"
        assert refused >= 4 * probes, f"{probes} probes for {refused} requests: not shared"


async def test_killed_engine_is_down_not_cooling_and_the_first_request_after_restart_is_served(ref: Path) -> None:
    """Break: no on-demand probe in the pool (`Prober.revive_if_none_up` returns at once) → 503 after the restart;
    health.record cooling a refused connection → state cooling_down."""
    with running_engine("--debug-routes") as engine:
        async with started_pool([engine], **NO_BACKGROUND) as pool:
            assert (await pool.synthesize(synthesis_request(ref))).frames > 0
            engine.kill()
            with pytest.raises(EngineUnavailable) as gone:
                await pool.synthesize(synthesis_request(ref))
            assert gone.value.engine == "e0"  # the request found it gone (named by its id)
            described = entry(pool)
            assert described["state"] == "down" and described["cooldown_remaining"] == 0, described
            await asyncio.to_thread(engine.restart)  # returns once the engine answers /openapi.json
            started = time.monotonic()
            result = await pool.synthesize(synthesis_request(ref))
            assert result.engine.url == engine.url and result.frames > 0 and result.attempts == 1
            assert time.monotonic() - started < 10.0
            assert entry(pool)["state"] == "ready"


async def test_engine_cooling_from_bad_answers_is_not_probed_on_demand(ref: Path) -> None:
    """A cooling engine stays out until its cooldown ends, whatever a probe would say: 503 at once, with
    Retry-After from the cooldown. (Which engines a request probes is pinned by the health unit tests.)
    Break: serve a cooling engine once a probe sees it answer (`Prober.revive_if_none_up` clearing
    cooldown_until) → the second request is served."""
    with running_engine("--debug-routes", "--fault", "500") as engine:
        async with started_pool([engine], cooldown_after_failures=1, cooldown_seconds=5.0,
                                cooldown_max_seconds=5.0, **NO_BACKGROUND) as pool:
            with pytest.raises(EngineBadResponse):
                await pool.synthesize(synthesis_request(ref))
            assert entry(pool)["state"] == "cooling_down"
            started = time.monotonic()
            with pytest.raises(EngineUnavailable) as refused:
                await pool.synthesize(synthesis_request(ref))
            assert time.monotonic() - started < 0.5 and refused.value.retry_after is not None
            assert refused.value.retry_after > 3.0


@asynccontextmanager
async def silent_listener(port: int) -> AsyncIterator[None]:
    """A socket on `port` that accepts connections and never answers (a hung host)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        yield
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_hung_engines_slow_probe_holds_back_no_other_engine(ref: Path) -> None:
    """Engine A accepts and never answers, so each of its probes lasts the whole connect_timeout (4 s);
    engine B starts later and must join within the down-probe interval, not after A's probe.
    Break: the probe loop awaiting its probes (as it did) → B joins up to 4 s late."""
    hung_port, port = free_port(), free_port()
    async with silent_listener(hung_port), started_pool(
        [f"http://127.0.0.1:{hung_port}", f"http://127.0.0.1:{port}"], connect_timeout=4.0,
        down_probe_interval=0.1, probe_interval=60.0,
    ) as pool:
        with ExitStack() as stack:  # started in a thread: the pool's loop keeps running meanwhile
            engine = await asyncio.to_thread(stack.enter_context, running_engine("--debug-routes", port=port))
            answered = time.monotonic()  # running_engine returns once the engine answers /openapi.json
            await wait_until_async(lambda: pool.status()["engines"][1]["state"] == "ready", timeout=10)
            joined = time.monotonic() - answered
            assert pool.status()["engines"][0]["state"] == "down"
            assert joined < 1.0, f"engine B joined {joined:.2f} s after it answered"
            result = await pool.synthesize(synthesis_request(ref))
            assert result.engine.url == engine.url


async def test_a_request_is_served_by_the_engine_that_came_back_without_waiting_for_a_hung_ones_probe(
    ref: Path,
) -> None:
    """Only on-demand probes (no background ones); engine A's probes last the whole connect_timeout (4 s).
    Break: revive_if_none_up waiting for every probe → the request waits out A's 4 s probe."""
    hung_port, port = free_port(), free_port()
    async with silent_listener(hung_port), started_pool(
        [f"http://127.0.0.1:{hung_port}", f"http://127.0.0.1:{port}"], connect_timeout=4.0, **NO_BACKGROUND
    ) as pool:
        with ExitStack() as stack:
            engine = await asyncio.to_thread(stack.enter_context, running_engine("--debug-routes", port=port))
            started = time.monotonic()
            result = await pool.synthesize(synthesis_request(ref))
            took = time.monotonic() - started
            assert result.engine.url == engine.url and result.frames > 0
            assert took < 3.0, f"served after {took:.2f} s: it waited for the hung engine's probe"
            assert pool.status()["engines"][0]["state"] == "down"


# ---------------------------------------------------------------------- item 8: the caller's fault


async def test_engine_refusing_malformed_text_keeps_its_health(ref: Path) -> None:
    """The engine answers a NUL byte with 400 "embedded null character": that is the request's fault.
    Break: classify `tts failed` + anything as EngineBadResponse again (protocol_v2) → 502, counted, and
    the second one cools the only engine down."""
    with running_engine("--debug-routes") as engine:
        async with started_pool([engine], cooldown_after_failures=2, probe_interval=60.0) as pool:
            for _ in range(2):
                with pytest.raises(EngineRejected) as refused:
                    await pool.synthesize(synthesis_request(ref, text="Hello\x00world, twice."))
                error = refused.value
                assert (error.status, error.code, error.engine) == (422, "engine_rejected", "e0")
                assert "embedded null character" in error.message and error.retry_after is None
                assert error.extra["attempts"] == 1
            described = entry(pool)
            assert described["state"] == "ready" and described["consecutive_failures"] == 0, described
            assert described["cooldown_remaining"] == 0
            assert "embedded null character" in described["last_error"]
            result = await pool.synthesize(synthesis_request(ref))
            assert result.engine.url == engine.url and result.frames > 0


# ---------------------------------------------------------------------- item 10: quiet logs


async def test_probe_loop_logs_state_changes_only(ref: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Break: log every failed probe at info (probing.py) → one line per probe cycle while down."""
    caplog.set_level(logging.DEBUG, logger="gateway.engine.pool")
    with running_engine("--debug-routes") as engine:
        async with started_pool([engine], probe_interval=0.1, down_probe_interval=0.05) as pool:
            caplog.clear()
            engine.kill()
            await wait_until_async(lambda: entry(pool)["state"] == "down")
            await asyncio.sleep(0.6)  # ~12 cycles of the down-probe interval
            await asyncio.to_thread(engine.restart)
            await wait_until_async(lambda: entry(pool)["state"] == "ready")
            await asyncio.sleep(0.3)  # a few healthy cycles too
    records = [r for r in caplog.records if r.name == "gateway.engine.pool"]
    failed_probes = [r for r in records if "still down" in r.getMessage()]
    shown = [(r.levelname, r.getMessage()) for r in records if r.levelno >= logging.INFO]
    assert len(failed_probes) >= 5, "the down engine was hardly probed: the test proves nothing"
    assert len(shown) == 2, shown
    assert shown[0][0] == "WARNING" and "stopped answering" in shown[0][1] and engine.url in shown[0][1]
    assert shown[1] == ("INFO", f"engine e0 ({engine.url}) is up (v2, version v2)")  # logs: the id and the URL


async def test_engine_absent_at_start_is_logged_once(ref: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.engine.pool")
    url = f"http://127.0.0.1:{free_port()}"
    async with started_pool([url], probe_interval=0.1, down_probe_interval=0.05):
        await asyncio.sleep(0.5)
    shown = [r.getMessage() for r in caplog.records if r.name == "gateway.engine.pool" and r.levelno >= logging.INFO]
    assert shown == [f"engine e0 ({url}) does not answer yet; it joins as soon as it does"]


async def test_unreachable_engine_found_by_a_request_is_logged_once(
    ref: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_engine("--debug-routes") as engine:
        async with started_pool([engine], down_probe_interval=0.05, probe_interval=60.0) as pool:
            caplog.set_level(logging.INFO, logger="gateway.engine.pool")
            engine.kill()
            with pytest.raises(EngineUnavailable):
                await pool.synthesize(synthesis_request(ref))
            await asyncio.sleep(0.4)
    shown = [r.getMessage() for r in caplog.records if r.name == "gateway.engine.pool" and r.levelno >= logging.INFO]
    assert len(shown) == 1 and shown[0].startswith(f"engine e0 ({engine.url}) is unreachable"), shown
