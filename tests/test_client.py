"""The Python client (`gateway.client.Client`) against a live gateway: every method, the audio decoded and
checked, each error type with the envelope's code, message and request id, and the retry policy (a 429 retried
after its Retry-After until served, and given up after the bounded attempts).

One gateway in front of the session's shared engine for the happy paths; a second engine (with debug routes, so
its faults can be set) behind a gateway that queues nothing (`max_queue=0`) for 429, 502 and 504; a gateway
whose only engine does not exist for 503.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.client import (
    BadGatewayError,
    BadRequestError,
    Client,
    ConflictError,
    GatewayConnectionError,
    GatewayTimeoutError,
    InvalidRequestError,
    Job,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedMediaError,
)
from tests.audio_decode import decode_audio
from tests.client_support import PROMPT, TEXT, assert_clip, gateway_before, reference_file, refusals
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import (
    EngineProcess,
    engine_stats,
    free_port,
    make_reference,
    running_engine,
    set_engine_faults,
    wait_until,
)

MAX_UPLOAD = 2_000_000


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with gateway_before(engine_v2, tmp_path_factory, max_upload_bytes=MAX_UPLOAD) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> Iterator[Client]:
    with Client(gateway.url) as c:
        yield c


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_file(tmp_path_factory)


def assert_envelope(error: pytest.ExceptionInfo[Exception], status: int, code: str) -> None:
    exc = error.value
    assert getattr(exc, "status", None) == status and getattr(exc, "code", None) == code, exc
    assert re.fullmatch(r"[0-9a-f]{32}", str(getattr(exc, "request_id", ""))), exc
    assert getattr(exc, "message", "") and str(exc).startswith(f"HTTP {status} {code}: ")


# ---------------------------------------------------------------------------------------------- synthesis


def test_clone_uploads_a_reference_and_decodes_the_audio(client: Client, ref: Path) -> None:
    from_path = client.clone(TEXT, ref, **PROMPT)
    seconds = assert_clip(from_path.audio)
    assert from_path.sample_rate == 32000 and abs(from_path.duration - seconds) < 0.01
    assert from_path.metadata["task"] == "voice_clone" and from_path.metadata["service_available"] is True
    assert from_path.request_id == from_path.metadata["request_id"]
    assert set(from_path.as_json()) >= {"output_audio_base64", "output_sample_rate", "output_duration",
                                        "processing_time", "text_length"}
    from_bytes = client.clone(TEXT, ref.read_bytes(), **PROMPT)
    assert from_bytes.metadata["reference_id"] == from_path.metadata["reference_id"]
    # unknown keyword arguments travel as request fields: the gateway validates this one and names it
    with pytest.raises(InvalidRequestError) as refused:
        client.clone(TEXT, ref, top_k="many", **PROMPT)
    assert_envelope(refused, 422, "invalid_request")
    assert "top_k" in refused.value.message


def test_speech_returns_a_whole_clip_and_stream_yields_chunks(client: Client, ref: Path) -> None:
    mp3 = client.speech(TEXT, reference=ref, response_format="mp3", prompt_text="A reference recording.")
    assert mp3.format == "mp3" and mp3.sample_rate == 32000 and mp3.duration
    assert abs(assert_clip(mp3.audio, "mp3") - mp3.duration) < 0.1
    voice = client.create_voice("speaker-for-speech", ref, **{k: PROMPT[k] for k in ("prompt_text", "prompt_language")})
    wav = client.speech(TEXT, voice=voice.id, response_format="wav")
    assert wav.voice_id == voice.id and wav.request_id
    chunks = list(client.stream(TEXT, voice="speaker-for-speech", response_format="wav"))
    assert len(chunks) > 1, "a stream should arrive in several chunks"
    # the stream is one WAV (a header with streaming-safe sizes, then PCM) of speech at the engine's rate
    assert_clip(b"".join(chunks))
    assert_clip(wav.audio)
    client.delete_voice(voice.id)


# ---------------------------------------------------------------------------------------------- voices


def test_voice_library_create_list_get_default_delete(client: Client, ref: Path) -> None:
    voice = client.create_voice("narrator", ref, prompt_text="A reference recording.", prompt_language="en",
                                description="for the client test")
    assert voice.id.startswith("voice_") and voice.name == "narrator" and voice.description == "for the client test"
    assert voice.id in [v.id for v in client.list_voices()]
    assert client.get_voice(voice.id).prompt_text == "A reference recording."
    assert client.set_default_voice(voice.id) == voice.id
    assert client.default_voice() == voice.id and client.get_voice(voice.id).is_default
    spoken = client.clone(TEXT, text_language="en")  # neither reference nor voice: the default voice
    assert spoken.metadata["voice_id"] == voice.id
    assert_clip(spoken.audio)
    with pytest.raises(ConflictError) as taken:
        client.create_voice("Narrator", ref)
    assert_envelope(taken, 409, "voice_name_taken")
    assert client.set_default_voice(None) is None and client.default_voice() is None
    client.delete_voice(voice.id)
    with pytest.raises(NotFoundError) as gone:
        client.get_voice(voice.id)
    assert_envelope(gone, 404, "voice_not_found")


# ---------------------------------------------------------------------------------------------- jobs


def test_a_job_is_submitted_followed_and_its_track_downloaded(client: Client, ref: Path, tmp_path: Path) -> None:
    srt = tmp_path / "lines.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:02,500\nBOB: Hello there.\n\n"
                   "2\n00:00:03,000 --> 00:00:05,000\nBOB: Goodbye now.\n")
    job = client.submit_job(subtitles=srt, speakers={"BOB": ref}, language="en", format="flac",
                            idempotency_key="client-test-job")
    assert job.status in ("queued", "running") and job.progress["total"] == 2
    assert client.submit_job(subtitles=srt, speakers={"BOB": ref}, language="en", format="flac",
                             idempotency_key="client-test-job").id == job.id  # the key makes a resend safe
    with pytest.raises(ConflictError) as early:
        client.download_track(job.id)
    assert_envelope(early, 409, "job_not_finished")
    seen: list[Job] = []
    finished = client.wait_for_job(job.id, on_progress=seen.append)
    assert finished.status == "done" and finished.progress["done"] == 2
    done_counts = [j.progress["done"] for j in seen]
    assert done_counts == sorted(done_counts) and done_counts[-1] == 2 and len(seen) >= 2, done_counts
    track = client.download_track(job.id, tmp_path / "track.flac")
    assert track.format == "flac" and track.segments == 2 and track.sample_rate == 32000
    assert (tmp_path / "track.flac").read_bytes() == track.audio
    samples, rate = decode_audio(track.audio, "flac")
    assert rate == 32000 and len(samples) / rate > 3.0  # the second line starts at 3 s
    assert client.get_job(job.id).status == "done"
    assert client.delete_job(job.id) is None
    with pytest.raises(NotFoundError):
        client.get_job(job.id)


def test_a_running_job_can_be_cancelled(client: Client, ref: Path) -> None:
    voice = client.create_voice("canceller", ref, prompt_text="A reference recording.", prompt_language="en")
    job = client.submit_job(segments=[{"text": f"Line {i} of many."} for i in range(30)], voice=voice.id,
                            language="en")
    cancelled = client.delete_job(job.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    client.delete_voice(voice.id)


# ---------------------------------------------------------------------------------------------- errors


def test_client_mistakes_raise_typed_request_errors(client: Client, ref: Path, tmp_path: Path) -> None:
    short = make_reference(tmp_path / "short.wav", seconds=1.0)
    with pytest.raises(InvalidRequestError) as too_short:
        client.clone(TEXT, short, **PROMPT)
    assert_envelope(too_short, 422, "reference_too_short")
    with pytest.raises(UnsupportedMediaError) as garbage:
        client.clone(TEXT, b"this is not audio at all", **PROMPT)
    assert_envelope(garbage, 415, "unsupported_audio")
    with pytest.raises(PayloadTooLargeError) as large:
        client.clone(TEXT, bytes(MAX_UPLOAD + 1), **PROMPT)
    assert_envelope(large, 413, "payload_too_large")
    with pytest.raises(BadRequestError) as fmt:
        client.speech(TEXT, reference=ref, response_format="midi")
    assert_envelope(fmt, 400, "unsupported_format")
    assert fmt.value.attempts == 1  # a client error is never sent again


def test_health_reports_readiness_without_raising(client: Client, tmp_path: Path) -> None:
    health = client.health()
    assert health.ready and health.status == "ready" and health.data["engines"]
    dead_engine = f"http://127.0.0.1:{free_port()}"
    with running_gateway(fast_settings(tmp_path, [dead_engine])) as gw, Client(gw.url, max_retries=1,
                                                                                 max_retry_wait=0.1) as c:
        down = c.health()
        assert not down.ready and down.status == "not_ready"
        with pytest.raises(ServiceUnavailableError) as unavailable:
            c.clone(TEXT, make_reference(tmp_path / "r.wav", seconds=4.0), **PROMPT)
        assert_envelope(unavailable, 503, "engine_unavailable")
        assert unavailable.value.retry_after is not None and unavailable.value.attempts == 2
        assert unavailable.value.details["service_available"] is False
    with Client(dead_engine, max_retries=2, max_retry_wait=0.05) as nobody, pytest.raises(
        GatewayConnectionError
    ) as refused:
        nobody.health()
    assert refused.value.retryable and refused.value.attempts == 3 and refused.value.status is None


# ---------------------------------------------------------------------------------------------- retries


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, EngineProcess]]:
    """A gateway that queues nothing (a second request while one runs is a 429) before an engine whose faults
    the tests set."""
    shared = tmp_path_factory.mktemp("busy")
    with running_engine("--debug-routes") as engine, running_gateway(
        fast_settings(shared, [engine.url], max_queue=0, cooldown_after_failures=100)
    ) as gw:
        yield gw, engine


def while_engine_busy(gw: GatewayServer, engine: EngineProcess, ref: Path) -> ThreadPoolExecutor:
    """Start one request that holds the engine (its delay), return once the engine has it."""
    pool = ThreadPoolExecutor(1)
    pool.submit(Client(gw.url).clone, TEXT, ref, **PROMPT)
    wait_until(lambda: engine_stats(engine.url)["in_flight"] == 1)
    return pool


def test_a_429_is_retried_after_retry_after_until_served(
    busy: tuple[GatewayServer, EngineProcess], ref: Path
) -> None:
    gw, engine = busy
    set_engine_faults(engine.url, delay=1.5)
    before = refusals(gw.url)
    pool = while_engine_busy(gw, engine, ref)
    try:
        with Client(gw.url, max_retries=4) as c:
            result = c.clone(TEXT, ref, **PROMPT)
        assert_clip(result.audio)
        assert refusals(gw.url) > before, "the first attempt should have been refused with a 429"
    finally:
        pool.shutdown(wait=True)
        set_engine_faults(engine.url, delay=0.0)


def test_a_429_is_given_up_after_the_bounded_attempts(busy: tuple[GatewayServer, EngineProcess], ref: Path) -> None:
    gw, engine = busy
    set_engine_faults(engine.url, delay=3.0)
    before = refusals(gw.url)
    pool = while_engine_busy(gw, engine, ref)
    try:
        started = time.monotonic()
        with Client(gw.url, max_retries=2, max_retry_wait=0.1) as c, pytest.raises(RateLimitError) as limited:
            c.clone(TEXT, ref, **PROMPT)
        assert_envelope(limited, 429, "queue_full")
        assert limited.value.retry_after is not None and limited.value.retry_after >= 1
        # max_retry_wait caps what Retry-After asks for: two waits of 0.1 s, not two of Retry-After
        assert time.monotonic() - started < limited.value.retry_after
        assert limited.value.attempts == 3 and refusals(gw.url) == before + 3
    finally:
        pool.shutdown(wait=True)
        set_engine_faults(engine.url, delay=0.0)


def test_engine_faults_raise_bad_gateway_and_timeout(busy: tuple[GatewayServer, EngineProcess], ref: Path) -> None:
    gw, engine = busy
    set_engine_faults(engine.url, fault="500")
    try:
        with Client(gw.url) as c, pytest.raises(BadGatewayError) as bad:
            c.clone(TEXT, ref, **PROMPT)
        assert_envelope(bad, 502, "engine_bad_response")
        assert bad.value.attempts == 1 and bad.value.details["engine"] == "e0"  # a 502 is not resent
    finally:
        set_engine_faults(engine.url, fault=None)
    set_engine_faults(engine.url, delay=2.0)
    try:
        with Client(gw.url, headers={"X-Request-Timeout": "0.5"}) as c, pytest.raises(GatewayTimeoutError) as late:
            c.clone(TEXT, ref, **PROMPT)
        assert_envelope(late, 504, "engine_timeout")
    finally:
        set_engine_faults(engine.url, delay=0.0)


# ---------------------------------------------------------------------------------------------- quality, speakers


@pytest.fixture(scope="module")
def extras(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three more recordings (other pitches: other content hashes, other speakers to an encoder)."""
    folder = tmp_path_factory.mktemp("aux")
    return [make_reference(folder / f"aux{i}.wav", seconds=3.5, f0=150.0 + 40 * i) for i in range(3)]


def sent_aux(engine: EngineProcess) -> list[str]:
    """The stems (content hashes) of the extra references the engine received with its last request."""
    return [Path(path).stem for path in engine_stats(engine.url)["aux_ref_audio_paths"]]


def test_extra_references_travel_with_clone_voices_and_speech(
    client: Client, engine_v2: EngineProcess, ref: Path, extras: list[Path]
) -> None:
    cloned = client.clone("Two more recordings.", ref, aux_references=[extras[0], extras[1].read_bytes()], **PROMPT)
    assert_clip(cloned.audio)
    assert cloned.quality is not None and cloned.quality["ok"] and cloned.quality["problems"] == []
    sent = sent_aux(engine_v2)
    assert len(sent) == 2 and len(set(sent)) == 2
    voice = client.create_voice("layered", ref, aux_references=extras[:2], prompt_text="A reference recording.",
                                prompt_language="en")
    assert voice.data["aux_reference_sha256"] == sent  # the same recordings: the same stored files, in order
    spoken = client.speech("The voice and one more.", voice=voice.id, aux_references=str(extras[2]))  # one path
    assert_clip(spoken.audio)
    assert spoken.quality_ok is True and spoken.quality_problems == []
    assert sent_aux(engine_v2)[:2] == sent and len(sent_aux(engine_v2)) == 3  # the voice's, then the request's
    client.delete_voice(voice.id)


def test_speaker_embedding_tells_voices_apart(client: Client, ref: Path, extras: list[Path]) -> None:
    first, again = client.speaker_embedding(ref), client.speaker_embedding(ref.read_bytes())
    other = client.speaker_embedding(extras[2])
    assert first.model == "ge2e" and first.dim == len(first.embedding) == 256 and 3.9 < first.duration < 4.1
    assert first.similarity(again) > 0.999 > first.similarity(other)
    with pytest.raises(ValueError, match="different models"):  # 256-d GE2E and 192-d ECAPA live in other spaces
        first.similarity(dataclasses.replace(other, model="ecapa"))


def test_a_suspect_output_is_rendered_again_then_reported(busy: tuple[GatewayServer, EngineProcess], ref: Path) -> None:
    gw, engine = busy
    set_engine_faults(engine.url, fault="mute", fault_count=1)  # the first render is silent, the next is fine
    try:
        with Client(gw.url) as c:
            mended = c.clone(TEXT, ref, quality_retries=1, **PROMPT)
            assert_clip(mended.audio)
            assert mended.quality and mended.quality["ok"] and len(mended.quality["attempts"]) == 2
            set_engine_faults(engine.url, fault_count=None)  # now every render is silent
            suspect = c.clone(TEXT, ref, quality_retries=1, **PROMPT)
    finally:
        set_engine_faults(engine.url, fault=None)
    assert suspect.quality and not suspect.quality["ok"] and suspect.quality["problems"] == ["silent"]
    assert len(suspect.quality["attempts"]) == 2
