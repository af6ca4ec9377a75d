"""`AsyncClient`, the asyncio twin of `Client`: every method against a live gateway (the requests they send are
built by the same code as the sync client's, tested in depth in test_client.py), a 429 retried until served,
and errors typed the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.client import AsyncClient, Job, NotFoundError, RateLimitError, ServiceError
from tests.audio_decode import decode_audio
from tests.client_support import PROMPT, TEXT, assert_clip, gateway_before, reference_file, refusals
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import (
    EngineProcess,
    engine_stats_async,
    make_reference,
    running_engine,
    set_engine_faults,
    wait_until_async,
)

pytestmark = pytest.mark.anyio



@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with gateway_before(engine_v2, tmp_path_factory) as gw:
        yield gw


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_file(tmp_path_factory)


async def test_synthesis_voices_and_health(gateway: GatewayServer, ref: Path) -> None:
    async with AsyncClient(gateway.url) as client:
        assert (await client.health()).ready
        cloned = await client.clone(TEXT, ref, **PROMPT)
        assert abs(assert_clip(cloned.audio) - cloned.duration) < 0.01 and cloned.request_id
        voice = await client.create_voice("async-voice", ref, prompt_text="A reference recording.",
                                          prompt_language="en")
        assert [v.id for v in await client.list_voices()] == [voice.id]
        assert (await client.get_voice(voice.id)).name == "async-voice"
        assert await client.set_default_voice(voice.id) == voice.id and await client.default_voice() == voice.id
        speech = await client.speech(TEXT, response_format="mp3")  # no voice: the default voice
        assert speech.voice_id == voice.id and abs(assert_clip(speech.audio, "mp3") - (speech.duration or 0)) < 0.1
        chunks = [chunk async for chunk in client.stream(TEXT, voice="async-voice")]
        assert len(chunks) > 1 and assert_clip(b"".join(chunks)) > 0.5
        assert await client.set_default_voice(None) is None
        await client.delete_voice(voice.id)
        with pytest.raises(NotFoundError) as gone:
            await client.get_voice(voice.id)
        assert gone.value.code == "voice_not_found" and gone.value.request_id


async def test_extra_references_and_speaker_embeddings(
    gateway: GatewayServer, engine_v2: EngineProcess, ref: Path, tmp_path: Path
) -> None:
    extra = make_reference(tmp_path / "aux.wav", seconds=3.5, f0=190.0)
    async with AsyncClient(gateway.url) as client:
        cloned = await client.clone("And one more recording.", ref, aux_references=[extra], **PROMPT)
        assert cloned.quality and cloned.quality["ok"] and assert_clip(cloned.audio) > 0.5
        sent = (await engine_stats_async(engine_v2.url))["aux_ref_audio_paths"]
        voice = await client.create_voice("async-layered", ref, aux_references=[extra.read_bytes()])
        assert voice.data["aux_reference_sha256"] == [Path(path).stem for path in sent] and len(sent) == 1
        spoken = await client.speech("Hello again.", voice=voice.id, aux_references=[ref])
        assert spoken.quality_ok and len((await engine_stats_async(engine_v2.url))["aux_ref_audio_paths"]) == 2
        await client.delete_voice(voice.id)
        embedding = await client.speaker_embedding(extra)
        assert embedding.dim == 256 and embedding.similarity(await client.speaker_embedding(ref)) < 0.999


async def test_jobs(gateway: GatewayServer, ref: Path, tmp_path: Path) -> None:
    async with AsyncClient(gateway.url) as client:
        job = await client.submit_job(
            segments=[{"text": "Hello there.", "start": 0.2, "speaker": "A"},
                      {"text": "Goodbye now.", "start": 2.5, "speaker": "A"}],
            speakers={"A": ref}, language="en")
        seen: list[Job] = []

        async def record(update: Job) -> None:  # an async callback is awaited
            seen.append(update)

        finished = await client.wait_for_job(job.id, on_progress=record)
        assert finished.status == "done" and seen and seen[-1].progress["done"] == 2
        track = await client.download_track(job.id, tmp_path / "track.wav")
        samples, rate = decode_audio((tmp_path / "track.wav").read_bytes(), "wav")
        assert track.segments == 2 and rate == 32000 and len(samples) / rate > 2.5
        assert (await client.get_job(job.id)).progress["total"] == 2
        assert await client.delete_job(job.id) is None


async def test_a_429_is_retried_and_concurrent_requests_share_the_client(
    tmp_path: Path, ref: Path
) -> None:
    with running_engine("--debug-routes") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url], max_queue=0)
    ) as gw:
        await asyncio.to_thread(set_engine_faults, engine.url, delay=1.0)
        before = await asyncio.to_thread(refusals, gw.url)
        async with AsyncClient(gw.url, max_retries=4) as client:
            first = asyncio.create_task(client.clone(TEXT, ref, **PROMPT))
            await wait_until_async(lambda: _in_flight(engine.url))
            second = await client.clone(TEXT, ref, **PROMPT)  # 429 first, then served after Retry-After
            assert_clip(second.audio) and assert_clip((await first).audio)
        assert await asyncio.to_thread(refusals, gw.url) > before, "the second request should have met a 429"
        async with AsyncClient(gw.url, max_retries=4) as patient, AsyncClient(gw.url, max_retries=0) as impatient:
            # the engine's first request comes from a patient client: a probe in progress (every 0.5 s here)
            # can refuse it once with max_queue=0, and that must not end the test early
            first = asyncio.create_task(patient.clone(TEXT, ref, **PROMPT))
            await wait_until_async(lambda: _in_flight(engine.url))
            with pytest.raises(RateLimitError) as limited:
                await impatient.clone(TEXT, ref, **PROMPT)
            assert isinstance(limited.value, ServiceError) and limited.value.attempts == 1
            assert limited.value.code == "queue_full" and limited.value.retry_after
            await first


async def _in_flight(url: str) -> bool:
    return bool((await engine_stats_async(url))["in_flight"] == 1)
