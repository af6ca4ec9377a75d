"""Dubbing jobs through a real gateway and real CPU engines: lifecycle, segment audio, retry of failed
segments only, idempotency, cancellation, expiry, events, and interactive requests going first."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from tests.gateway_support import GatewayServer, clone, fast_settings, running_gateway
from tests.job_support import create_voice, job, lines, submit, wait_for_done_segments, wait_for_job
from tests.support import (
    EngineProcess,
    assert_error,
    assert_speech,
    decode_wav,
    engine_stats,
    make_reference,
    running_engine,
    set_engine_faults,
    wait_until,
)


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with running_engine("--debug-routes", "--delay", "0.2") as proc:
        yield proc


@pytest.fixture
def gateway(tmp_path: Path, engine: EngineProcess) -> Iterator[GatewayServer]:
    set_engine_faults(engine.url, fault=None, delay=0.2)
    with running_gateway(fast_settings(tmp_path / "shared", [engine.url], job_concurrency=2)) as gw:
        yield gw


def test_a_job_runs_every_segment_and_serves_their_audio(gateway: GatewayServer, tmp_path: Path) -> None:
    voice = create_voice(gateway.url, tmp_path)
    accepted = submit(gateway.url, {"voice": voice, "segments": [*lines(3), {"id": "last", "text": "The end."}]})
    assert accepted.status_code == 202, accepted.text
    summary = accepted.json()
    assert summary["status"] in ("queued", "running") and summary["progress"]["total"] == 4
    assert accepted.headers["location"] == f"/v1/jobs/{summary['id']}"
    finished = wait_for_job(gateway.url, summary["id"])
    assert finished["status"] == "done" and finished["progress"]["done"] == 4, finished
    assert [s["id"] for s in finished["segments"]] == ["1", "2", "3", "last"]
    for segment in finished["segments"]:
        assert segment["status"] == "done" and segment["attempts"] == 1 and segment["voice_id"] == voice
        audio = httpx.get(segment["url"], timeout=30)
        assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
        samples, rate = decode_wav(audio.content)
        assert rate == segment["sample_rate"] and abs(len(samples) / rate - segment["duration"]) < 0.01
        assert_speech(samples, rate, expected_rate=32000, min_seconds=0.3, max_seconds=10)
    flac = httpx.get(f"{finished['segments'][0]['url']}?format=flac&sample_rate=16000", timeout=30)
    assert flac.status_code == 200 and flac.content[:4] == b"fLaC" and flac.headers["x-sample-rate"] == "16000"
    track = httpx.get(finished["track_url"], timeout=60)
    assert track.status_code == 200 and track.headers["x-segments"] == "4"
    samples, rate = decode_wav(track.content)
    total = sum(s["duration"] for s in finished["segments"])
    assert abs(len(samples) / rate - total) < 0.05  # no cue times: one after the other
    flac_track = httpx.get(f"{finished['track_url']}?format=flac&sample_rate=24000", timeout=60)
    assert flac_track.status_code == 200 and flac_track.headers["x-sample-rate"] == "24000"
    flac_samples, flac_rate = sf.read(io.BytesIO(flac_track.content), dtype="float32")
    assert flac_rate == 24000 and abs(len(flac_samples) / flac_rate - len(samples) / rate) < 0.01
    # the temporary track file goes once the answer is sent (a background task: just after the client has it)
    wait_until(lambda: not list(gateway.settings.jobs_dir.glob(".track-*")), timeout=5)
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'gateway_job_segments_total{outcome="done"} 4.0' in metrics


def test_bad_jobs_are_refused_before_anything_runs(gateway: GatewayServer, tmp_path: Path) -> None:
    stats = engine_stats_requests(gateway)
    assert_error(submit(gateway.url, {"segments": lines(2)}), 422, "missing_reference", contains="no voice")
    assert_error(submit(gateway.url, {"voice": "nobody", "segments": lines(1)}), 422, "unknown_voice")
    assert_error(submit(gateway.url, {}), 422, "invalid_request", contains="'segments' or 'subtitles'")
    voice = create_voice(gateway.url, tmp_path)
    twice = [{"id": "a", "text": "One."}, {"id": "a", "text": "Two."}]
    assert_error(submit(gateway.url, {"voice": voice, "segments": twice}), 422, "duplicate_segment_id")
    bad_text = [{"text": "Hello\x00there"}]
    assert_error(submit(gateway.url, {"voice": voice, "segments": bad_text}), 422, "invalid_text", contains="segment 1")
    backwards = [{"text": "Hi.", "start": 2.0, "end": 1.0}]
    assert_error(submit(gateway.url, {"voice": voice, "segments": backwards}), 422, "invalid_request",
                 contains="must be after start")
    assert_error(httpx.get(f"{gateway.url}/v1/jobs/nope", timeout=10), 404, "job_not_found")
    assert engine_stats_requests(gateway) == stats


def engine_stats_requests(gateway: GatewayServer) -> int:
    return int(engine_stats(gateway.settings.engines[0])["requests"])


def test_idempotency_key_gives_the_same_job_and_refuses_another_body(gateway: GatewayServer, tmp_path: Path) -> None:
    voice = create_voice(gateway.url, tmp_path)
    body = {"voice": voice, "segments": lines(1)}
    first = submit(gateway.url, body, **{"Idempotency-Key": "batch-7"})
    again = submit(gateway.url, body, **{"Idempotency-Key": "batch-7"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = submit(gateway.url, {**body, "language": "en"}, **{"Idempotency-Key": "batch-7"})
    error = assert_error(other, 409, "idempotency_key_reused")
    assert error["job_id"] == first.json()["id"]
    assert submit(gateway.url, body).json()["id"] != first.json()["id"]  # no key: a new job
    wait_for_job(gateway.url, first.json()["id"])


def test_failed_segments_are_retried_alone(engine: EngineProcess, tmp_path: Path) -> None:
    set_engine_faults(engine.url, fault=None, delay=0.0)
    settings = fast_settings(tmp_path / "shared", [engine.url], job_concurrency=1, cooldown_seconds=0.2,
                             max_queue_wait=2.0)
    with running_gateway(settings) as gw:
        voice = create_voice(gw.url, tmp_path)
        before = engine_stats(engine.url)["requests"]
        set_engine_faults(engine.url, fault="500", fault_after=2)  # two lines succeed, then every call fails
        job_id = submit(gw.url, {"voice": voice, "segments": lines(4)}).json()["id"]
        failed = wait_for_job(gw.url, job_id)
        assert failed["status"] == "failed", failed
        statuses = [s["status"] for s in failed["segments"]]
        assert statuses == ["done", "done", "failed", "failed"]
        error = failed["segments"][2]["error"]
        assert error["status"] in (502, 503) and error["code"] in ("engine_bad_response", "engine_unavailable")
        assert failed["segments"][2]["attempts"] == 3  # three rounds of the pool's failover
        done_audio = [s["audio"] for s in failed["segments"][:2]]
        assert_error(httpx.get(f"{gw.url}/v1/jobs/{job_id}/segments/3", timeout=10), 409, "segment_not_ready")

        set_engine_faults(engine.url, fault=None)
        wait_until(lambda: httpx.get(f"{gw.url}/readyz", timeout=5).status_code == 200)
        calls_before_retry = engine_stats(engine.url)["requests"]
        retried = httpx.post(f"{gw.url}/v1/jobs/{job_id}/retry", timeout=10)
        assert retried.status_code == 202 and retried.json()["status"] == "running"
        done = wait_for_job(gw.url, job_id)
        assert done["status"] == "done" and [s["audio"] for s in done["segments"][:2]] == done_audio
        assert engine_stats(engine.url)["requests"] - calls_before_retry == 2  # only the two failed ones ran
        assert engine_stats(engine.url)["requests"] > before
        assert_error(httpx.post(f"{gw.url}/v1/jobs/{job_id}/retry", timeout=10), 409, "nothing_to_retry")


def test_cancel_stops_the_job_and_delete_removes_a_finished_one(gateway: GatewayServer, tmp_path: Path) -> None:
    voice = create_voice(gateway.url, tmp_path)
    job_id = submit(gateway.url, {"voice": voice, "segments": lines(12)}).json()["id"]
    wait_for_done_segments(gateway.url, job_id, 1)
    cancelled = httpx.delete(f"{gateway.url}/v1/jobs/{job_id}", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    statuses = {s["status"] for s in cancelled.json()["segments"]}
    assert statuses <= {"done", "cancelled"} and "cancelled" in statuses
    time.sleep(1.0)  # a call that was running finishes in the pool; nothing new starts
    settled = engine_stats_requests(gateway)
    time.sleep(1.0)
    assert engine_stats_requests(gateway) == settled
    assert job(gateway.url, job_id)["status"] == "cancelled"
    track = httpx.get(f"{gateway.url}/v1/jobs/{job_id}/track", timeout=30)
    assert track.status_code == 200 and int(track.headers["x-segments"]) >= 1  # what was done is kept
    audio_dir = gateway.settings.jobs_dir / "audio"
    assert any(audio_dir.iterdir())
    assert httpx.delete(f"{gateway.url}/v1/jobs/{job_id}", timeout=30).status_code == 204
    assert_error(httpx.get(f"{gateway.url}/v1/jobs/{job_id}", timeout=10), 404, "job_not_found")
    assert not (gateway.settings.jobs_dir / f"{job_id}.json").exists() and not any(audio_dir.iterdir())


def test_finished_jobs_expire_after_the_ttl(engine: EngineProcess, tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "shared", [engine.url], job_ttl=1.0)
    with running_gateway(settings) as gw:
        voice = create_voice(gw.url, tmp_path)
        job_id = submit(gw.url, {"voice": voice, "segments": lines(1)}).json()["id"]
        done = wait_for_job(gw.url, job_id)
        audio = settings.jobs_dir / "audio" / f"{done['segments'][0]['audio']}.wav"
        assert audio.exists() and (settings.jobs_dir / f"{job_id}.json").exists()
        wait_until(lambda: httpx.get(f"{gw.url}/v1/jobs/{job_id}", timeout=5).status_code == 404, timeout=10)
        # The sweep forgets the job first (so nothing can retry it meanwhile), then deletes its files off the loop.
        wait_until(lambda: not audio.exists() and not (settings.jobs_dir / f"{job_id}.json").exists(), timeout=5)


def test_events_stream_progress_until_the_end(gateway: GatewayServer, tmp_path: Path) -> None:
    voice = create_voice(gateway.url, tmp_path)
    job_id = submit(gateway.url, {"voice": voice, "segments": lines(3)}).json()["id"]
    events: list[tuple[str, dict[str, object]]] = []
    with httpx.stream("GET", f"{gateway.url}/v1/jobs/{job_id}/events", timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "done"
    done_counts = [payload["progress"]["done"] for _, payload in events]  # type: ignore[index]
    assert done_counts == sorted(done_counts) and set(done_counts) >= {0, 1, 2, 3}


def test_interactive_requests_go_before_queued_job_segments(gateway: GatewayServer, tmp_path: Path) -> None:
    """One engine, a job with two segments in flight (one running, one queued): a request sent now is served
    by the engine's very next slot, before the queued segment."""
    voice = create_voice(gateway.url, tmp_path)
    set_engine_faults(gateway.settings.engines[0], delay=0.6)
    job_id = submit(gateway.url, {"voice": voice, "segments": lines(6)}).json()["id"]
    wait_until(lambda: httpx.get(f"{gateway.url}/readyz", timeout=5).json()["batch_queue_depth"] == 1)
    done_when_sent = job(gateway.url, job_id)["progress"]["done"]
    reference = make_reference(tmp_path / "ref.wav").read_bytes()
    answer = clone(gateway.url, reference, timeout=60)
    assert answer.status_code == 200, answer.text
    done_when_answered = job(gateway.url, job_id)["progress"]["done"]
    # only the segment that held the engine when the request arrived finished before it
    assert done_when_answered - done_when_sent <= 1, (done_when_sent, done_when_answered)
    wait_for_job(gateway.url, job_id)


def test_speaker_references_come_from_a_voice_or_an_upload(gateway: GatewayServer, tmp_path: Path) -> None:
    narrator = create_voice(gateway.url, tmp_path)
    bob = create_voice(gateway.url, tmp_path, name="bob", f0=150.0)
    segments = [{"id": "n", "text": "Narration."}, {"id": "b", "text": "Bob speaks.", "speaker": "BOB"},
                {"id": "a", "text": "Alice speaks.", "speaker": "ALICE"}]
    body = {"voice": narrator, "segments": segments, "speakers": {"BOB": {"voice": "bob"}}}
    alice_ref = make_reference(tmp_path / "alice.wav", seconds=3.5, f0=220.0).read_bytes()
    accepted = httpx.post(
        f"{gateway.url}/v1/jobs",
        data={"job": json.dumps(body)},
        files={"speaker.ALICE": ("alice.wav", alice_ref, "audio/wav")},
        timeout=60,
    )
    assert accepted.status_code == 202, accepted.text
    done = wait_for_job(gateway.url, accepted.json()["id"])
    by_id = {s["id"]: s for s in done["segments"]}
    assert by_id["n"]["voice_id"] == narrator and by_id["b"]["voice_id"] == bob
    assert done["speakers"]["ALICE"]["source"] == "upload" and by_id["a"]["voice_id"] is None
    assert by_id["a"]["reference_id"] == done["speakers"]["ALICE"]["reference_id"]
    stranger = {"voice": narrator, "segments": segments[:1], "speakers": {"CAROL": {"voice": "bob"}}}
    assert_error(submit(gateway.url, stranger), 422, "unknown_speaker", contains="CAROL")
    short = make_reference(tmp_path / "short.wav", seconds=1.0).read_bytes()
    refused = httpx.post(f"{gateway.url}/v1/jobs", data={"job": json.dumps({**body, "segments": segments})},
                         files={"speaker.ALICE": ("a.wav", short, "audio/wav")}, timeout=60)
    assert_error(refused, 422, "reference_too_short")
    assert_error(httpx.post(f"{gateway.url}/v1/jobs", data={"job": json.dumps(body)},
                            files={"poster": ("p.png", b"x", "image/png")}, timeout=60), 422, "unexpected_file")


def test_rerendering_an_unchanged_seeded_job_costs_no_engine_time(gateway: GatewayServer, tmp_path: Path) -> None:
    voice = create_voice(gateway.url, tmp_path)
    body = {"voice": voice, "seed": 5, "segments": [{**line, "start": 2.0 * i, "end": 2.0 * i + 1.8}
                                                      for i, line in enumerate(lines(3))]}
    first = wait_for_job(gateway.url, submit(gateway.url, body).json()["id"])
    assert first["status"] == "done" and not any(s["cached"] for s in first["segments"])
    calls = engine_stats_requests(gateway)
    again = wait_for_job(gateway.url, submit(gateway.url, body).json()["id"])
    assert again["status"] == "done" and all(s["cached"] for s in again["segments"])
    assert engine_stats_requests(gateway) == calls  # every line came from the result cache
    assert [s["audio"] for s in again["segments"]] == [s["audio"] for s in first["segments"]]
    assert [s["timing"] for s in again["segments"]] == [s["timing"] for s in first["segments"]]
