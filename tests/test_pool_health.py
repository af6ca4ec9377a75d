"""EnginePool health bookkeeping against real CPU engines: what may (and may not) take an engine out.

- a client's short deadline is the client's business, not the engine's;
- a slow stream consumer is not a slow engine;
- no instant retry on the engine that just failed: the last engine error is the honest answer;
- probes never stall behind our own request (`--stall-probes` makes the engine behave like api_v2);
- mixed pools route by capability (model version languages, reference-free needs api_v2).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.engine.pool import EnginePool
from gateway.errors import EngineBadResponse, EngineRejected, EngineTimeout
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


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    """One api_v2-like engine that, like the real one, answers nothing else while a mode-0 synthesis runs."""
    with running_engine("--debug-routes", "--stall-probes") as process:
        yield process


@pytest.fixture
def clean(engine: EngineProcess) -> Iterator[EngineProcess]:
    yield engine
    set_engine_faults(engine.url, fault=None, delay=0.0, fault_after=0)


def state_of(pool: EnginePool, index: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = pool.status()["engines"][index]
    return entry


async def test_short_client_deadline_keeps_the_engine_in_rotation(clean: EngineProcess, ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean.url, delay=2.0)
    async with started_pool([clean.url]) as pool:
        with pytest.raises(EngineTimeout) as caught:
            await pool.synthesize(synthesis_request(ref), timeout=0.5)
        assert caught.value.status == 504 and caught.value.engine is None  # the caller's deadline, not the engine's
        entry = state_of(pool)
        assert entry["state"] == "busy" and entry["in_flight"] == 1, "the detached call must keep the slot"
        assert entry["consecutive_failures"] == 0
        follow_up = await pool.synthesize(synthesis_request(ref))  # queues behind the detached call, then runs
        assert follow_up.frames > 0 and follow_up.queue_wait > 0
        assert state_of(pool)["state"] == "ready"
    assert (await engine_stats_async(clean.url))["max_in_flight"] == 1


async def test_slow_stream_consumer_does_not_mark_the_engine_down(clean: EngineProcess, ref: Path) -> None:
    text = " ".join(f"Sentence {n} of a text that streams in several chunks." for n in range(4))
    async with started_pool([clean.url], read_timeout=3.0) as pool:
        async with pool.stream(synthesis_request(ref, text=text)) as stream:
            pieces = []
            async for chunk in stream.chunks():
                if not pieces:
                    await asyncio.sleep(3.5)  # the consumer alone uses up the engine's whole budget
                pieces.append(chunk)
        assert stream.finished and stream.error is None and len(b"".join(pieces)) > stream.sample_rate
        entry = state_of(pool)
        assert entry["state"] == "ready" and entry["consecutive_failures"] == 0


async def test_no_instant_retry_on_the_engine_that_just_failed(clean: EngineProcess, ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean.url, fault="silence")
    async with started_pool([clean.url], cooldown_after_failures=1, max_attempts=3) as pool:
        before = (await engine_stats_async(clean.url))["requests"]
        with pytest.raises(EngineBadResponse) as caught:
            await pool.synthesize(synthesis_request(ref))
        assert caught.value.code == "engine_silence" and caught.value.status == 502  # not 503 "no engine"
        assert caught.value.extra["attempts"] == 1
        assert (await engine_stats_async(clean.url))["requests"] - before == 1


async def test_stall_probes_flag_holds_openapi_during_a_whole_file_synthesis(clean: EngineProcess, ref: Path) -> None:
    await asyncio.to_thread(set_engine_faults, clean.url, delay=1.5)
    async with started_pool([clean.url]) as pool, httpx.AsyncClient(timeout=10) as client:
        job = asyncio.create_task(pool.synthesize(synthesis_request(ref)))
        await wait_until_async(lambda: state_of(pool)["in_flight"] == 1)
        await asyncio.sleep(0.3)  # the engine is inside the synthesis now
        started = time.monotonic()
        assert (await client.get(f"{clean.url}/openapi.json")).status_code == 200
        assert time.monotonic() - started > 0.5, "/openapi.json answered during a mode-0 synthesis"
        assert (await job).frames > 0


async def test_probes_under_load_never_mark_an_engine_down(ref: Path) -> None:
    # Probes every 50 ms with a 0.3 s limit against engines that stall probes during 0.4 s syntheses:
    # a single probe sent to a busy engine would time out and mark it down.
    with ExitStack() as stack:
        group = [stack.enter_context(running_engine("--debug-routes", "--stall-probes", "--delay", "0.4"))
                 for _ in range(2)]
        async with started_pool([e.url for e in group], probe_interval=0.05, connect_timeout=0.3) as pool:
            seen: set[str] = set()

            async def watch() -> None:
                while True:
                    seen.update(entry["state"] for entry in pool.status()["engines"])
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            try:
                for _ in range(3):
                    results = await asyncio.gather(*(pool.synthesize(synthesis_request(ref)) for _ in range(6)))
                    assert all(result.attempts == 1 for result in results)
                    await asyncio.sleep(0.07)  # let probes and new requests race for idle engines
            finally:
                watcher.cancel()
            assert seen <= {"ready", "busy"}, f"an engine was taken out: {seen}"
            assert all(entry["consecutive_failures"] == 0 for entry in pool.status()["engines"])


async def test_mixed_pool_routes_by_capability(ref: Path) -> None:
    with running_engine("--model-version", "v1") as v1_model, running_engine(flavor="v1") as legacy:
        async with started_pool([v1_model.url, legacy.url]) as pool:
            korean_request = synthesis_request(ref, text="안녕하세요", text_language="ko")
            korean = [await pool.synthesize(korean_request) for _ in range(3)]
            assert {result.engine.url for result in korean} == {legacy.url}, "a v1 model cannot speak Korean"
            reference_free = [await pool.synthesize(synthesis_request(ref, prompt_text="")) for _ in range(3)]
            assert {result.engine.url for result in reference_free} == {v1_model.url}, "api.py needs a prompt"
            with pytest.raises(EngineRejected) as caught:
                await pool.synthesize(synthesis_request(ref, text="안녕하세요", text_language="ko", prompt_text=""))
            assert caught.value.status == 422 and "no engine can serve" in caught.value.message
            assert pool.supported_languages() is None  # api.py's version is unknown: no up-front refusal
