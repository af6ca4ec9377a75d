"""Several replicas sharing engines through a real redis-server: each replica is an EnginePool with its own
Redis link, all in one event loop (the subprocess tests in test_scale.py add SIGKILL and load)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.coord.link import RedisLink
from gateway.engine.pool import EnginePool
from gateway.errors import EngineUnavailable, QueueFull
from gateway.logs import request_id_var
from gateway.settings import ModelWeights
from tests.redis_support import RedisServer
from tests.support import (
    EngineProcess,
    engine_stats_async,
    make_reference,
    pool_settings,
    running_engine,
    set_engine_faults,
    synthesis_request,
    wait_until_async,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_reference(tmp_path_factory.mktemp("scale") / "ref.wav")


@asynccontextmanager
async def replicas(
    engines: Sequence[EngineProcess], redis: RedisServer, count: int, **overrides: Any
) -> AsyncIterator[list[EnginePool]]:
    """`count` started pools over the same engines and Redis, as separate replicas would be."""
    overrides.setdefault("lease_seconds", 1.0)
    async with AsyncExitStack() as stack:
        pools = []
        for index in range(count):
            settings = pool_settings(engines, redis_url=redis.url, replica_id=f"r{index}", **overrides)
            link = RedisLink(settings)
            stack.push_async_callback(link.close)
            pool = EnginePool(settings, None, link)
            await pool.start()
            stack.push_async_callback(pool.close)
            pools.append(pool)
        await wait_until_async(lambda: all(pool.status()["ready"] for pool in pools), timeout=15)
        yield pools


async def labelled(pool: EnginePool, ref: Path, label: str, **fields: Any) -> Any:
    """A synthesis whose X-Request-ID is `label` (the CPU engine lists the ids in the order it served them)."""
    request_id_var.set(label)
    return await pool.synthesize(synthesis_request(ref, **fields))


async def test_replicas_never_put_two_requests_on_one_engine_and_lose_nothing(
    redis_server: RedisServer, ref: Path
) -> None:
    with running_engine("--debug-routes", "--instant", "--delay", "0.1") as e0, \
            running_engine("--debug-routes", "--instant", "--delay", "0.1") as e1:
        async with replicas([e0, e1], redis_server, 3) as pools:
            results = await asyncio.gather(*(labelled(pools[i % 3], ref, f"q{i}") for i in range(30)))
        assert all(result.frames > 0 for result in results)
        stats = [await engine_stats_async(engine.url) for engine in (e0, e1)]
    assert [s["max_in_flight"] for s in stats] == [1, 1], stats
    served = sorted(rid for s in stats for path, rid in s["request_ids"] if path == "/tts")
    assert served == sorted(f"q{i}" for i in range(30))  # each exactly once: nothing lost, nothing doubled


async def test_the_queue_is_first_come_first_served_across_replicas(redis_server: RedisServer, ref: Path) -> None:
    with running_engine("--debug-routes", "--instant", "--delay", "0.6") as engine:
        async with replicas([engine], redis_server, 2, probe_interval=60.0) as (a, b):
            first = asyncio.create_task(labelled(a, ref, "f0"))
            await asyncio.sleep(0.2)  # f0 is on the engine; the rest queue in this order, alternating replicas
            rest = []
            for index, pool in enumerate((b, a, b, a)):
                rest.append(asyncio.create_task(labelled(pool, ref, f"f{index + 1}")))
                await asyncio.sleep(0.05)
            await asyncio.gather(first, *rest)
        stats = await engine_stats_async(engine.url)
    assert [rid for path, rid in stats["request_ids"] if path == "/tts"] == ["f0", "f1", "f2", "f3", "f4"]


async def test_the_429_counts_the_waiters_of_every_replica(redis_server: RedisServer, ref: Path) -> None:
    with running_engine("--instant", "--delay", "1.0") as engine:
        async with replicas([engine], redis_server, 2, max_queue=2, probe_interval=60.0) as (a, b):
            busy = asyncio.create_task(a.synthesize(synthesis_request(ref)))
            await asyncio.sleep(0.2)
            waiting = [asyncio.create_task(pool.synthesize(synthesis_request(ref))) for pool in (a, b)]
            await wait_until_async(lambda: b.status()["queue_depth"] == 2 or a.status()["queue_depth"] == 2)
            with pytest.raises(QueueFull) as refused:
                await b.synthesize(synthesis_request(ref))
            assert "2 requests are already waiting" in refused.value.message
            assert refused.value.retry_after is not None and refused.value.retry_after >= 1
            await asyncio.gather(busy, *waiting)


async def test_a_cooldown_seen_by_one_replica_holds_for_all(redis_server: RedisServer, ref: Path) -> None:
    with running_engine("--debug-routes", "--instant") as bad, running_engine("--instant") as good:
        async with replicas([bad, good], redis_server, 2, cooldown_after_failures=1, cooldown_seconds=30.0,
                            probe_interval=60.0) as (a, b):
            set_engine_faults(bad.url, fault="500")
            for _ in range(2):  # one of these lands on the bad engine, fails over, and cools it down
                assert (await a.synthesize(synthesis_request(ref))).engine.url == good.url
            await wait_until_async(lambda: {e["id"]: e["state"] for e in b.status()["engines"]}["e0"] == "cooling_down")
            for _ in range(3):  # b never sent anything to the bad engine, and does not now
                assert (await b.synthesize(synthesis_request(ref))).engine.url == good.url


async def test_loaded_weights_are_shared_so_replicas_switch_only_when_needed(
    redis_server: RedisServer, ref: Path, tmp_path: Path
) -> None:
    voices = {}
    for name in ("a", "b"):
        path = tmp_path / f"voice_{name}_v2.pth"
        path.write_bytes(b"weights")
        voices[name] = ModelWeights(sovits=str(path))
    with running_engine("--debug-routes", "--instant") as engine:
        async with replicas([engine], redis_server, 2, probe_interval=60.0) as (a, b):
            for pool, name in ((a, "a"), (b, "a"), (b, "b"), (a, "b"), (a, "a"), (b, "a")):
                await pool.synthesize(synthesis_request(ref, weights=voices[name]))
        stats = await engine_stats_async(engine.url)
    # a (switch), a (b knows it is loaded), b (switch), b, a (switch), a
    assert stats["set_weights_calls"] == 3, stats
    assert stats["sovits_weights"] == voices["a"].sovits


async def test_redis_down_is_a_503_that_readiness_explains_and_it_heals_without_a_restart(
    redis_server: RedisServer, ref: Path
) -> None:
    with running_engine("--instant") as engine:
        async with replicas([engine], redis_server, 1, probe_interval=60.0) as (pool,):
            redis_server.stop()
            with pytest.raises(EngineUnavailable) as refused:
                await pool.synthesize(synthesis_request(ref))
            assert refused.value.code == "redis_unavailable"
            assert refused.value.retry_after == 2.0
            assert "Redis does not answer" in refused.value.message
            status = pool.status()
            assert status["ready"] is False and status["redis"]["up"] is False
            assert "Redis does not answer" in status["redis"]["last_error"]
            redis_server.start()
            await wait_until_async(lambda: pool.status()["ready"], timeout=15)
            assert (await pool.synthesize(synthesis_request(ref))).frames > 0


async def test_no_engine_is_double_booked_across_a_redis_restart(redis_server: RedisServer, ref: Path) -> None:
    """A request runs on the only engine while Redis restarts empty: the other replica re-registers the
    engine and would probe and use it at once, but the script grants nothing until the holder has had a
    whole lease to re-establish its lease."""
    with running_engine("--debug-routes", "--instant", "--delay", "3.0") as engine:
        async with replicas([engine], redis_server, 2, lease_seconds=4.0, probe_interval=60.0) as (a, b):
            holder = asyncio.create_task(labelled(a, ref, "holder"))
            await wait_until_async(lambda: a.status()["engines"][0]["in_flight"] == 1)
            await asyncio.sleep(0.2)
            redis_server.restart()
            second = None
            for _ in range(100):  # a client retrying its 503s
                try:
                    second = await labelled(b, ref, "second")
                    break
                except EngineUnavailable:
                    await asyncio.sleep(0.1)
            await holder
        stats = await engine_stats_async(engine.url)
    assert second is not None and second.frames > 0
    assert stats["max_in_flight"] == 1, stats
    assert [rid for path, rid in stats["request_ids"] if path == "/tts"] == ["holder", "second"]


async def test_streams_hold_their_lease_to_the_last_chunk_even_when_left_early(
    redis_server: RedisServer, ref: Path
) -> None:
    """A stream holds the engine's lease until its last chunk (or, left early, its drain): another replica's
    request waits for it, and the engine never has two at once."""
    text = "One sentence. Another sentence. And a third one, to make several chunks."
    with running_engine("--debug-routes", "--segment-delay", "0.3") as engine:
        async with replicas([engine], redis_server, 2, probe_interval=60.0) as (a, b):
            async def stream_all() -> int:
                async with a.stream(synthesis_request(ref, text=text)) as stream:
                    return sum([len(chunk) async for chunk in stream.chunks()])

            async def stream_one_chunk() -> None:
                # the chunk generator is closed here, not later by the event loop's finalizer
                async with b.stream(synthesis_request(ref, text=text)) as stream, aclosing(stream.chunks()) as chunks:
                    async for _ in chunks:
                        break  # the consumer goes away: the slot drains, then returns

            whole = asyncio.create_task(stream_all())
            await asyncio.sleep(0.1)
            others = [asyncio.create_task(b.synthesize(synthesis_request(ref))),
                      asyncio.create_task(stream_one_chunk())]
            assert await whole > 0
            await asyncio.gather(*others)
            assert (await a.synthesize(synthesis_request(ref))).frames > 0  # the abandoned stream's lease came back
        stats = await engine_stats_async(engine.url)
    assert stats["max_in_flight"] == 1, stats
