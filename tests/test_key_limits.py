"""Per-key limits through a real gateway and CPU engine: requests per minute, requests in flight (held until a
stream ends, freed when its client leaves), audio seconds per day (whole answers, streams and jobs), the 429
envelope with Retry-After and X-RateLimit-*; the limiter's arithmetic with a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from gateway.auth.keys import Limits
from gateway.auth.limits import MemoryLimiter
from tests.auth_support import bearer, write_keys
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import (
    EngineProcess,
    assert_error,
    assert_speech,
    decode_wav,
    make_reference,
    set_engine_faults,
    wait_until,
)

TEXT = "Each key has its own budget. It lasts more than a second."


@pytest.fixture(scope="module")
def engine(engine_v2: EngineProcess) -> EngineProcess:
    return engine_v2  # the session's engine (with --debug-routes): its faults are put back after use


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, engine: EngineProcess
          ) -> Iterator[tuple[GatewayServer, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("limits")
    raws = write_keys(tmp / "keys.txt", {
        "admin": ("admin", {}),
        "rpm": ("synthesize", {"rpm": 5}),
        "other": ("synthesize", {}),
        "one": ("synthesize", {"concurrency": 1}),
        "quota": ("synthesize", {"audio_seconds_per_day": 1}),
        "clone-quota": ("synthesize", {"audio_seconds_per_day": 1}),
        "stream-quota": ("synthesize", {"audio_seconds_per_day": 1}),
        "job-quota": ("synthesize", {"audio_seconds_per_day": 1}),
    })
    # a default that every key without its own rpm inherits (and that these tests never reach)
    settings = fast_settings(tmp / "shared", [engine.url], api_keys_file=tmp / "keys.txt", key_rpm=1000)
    with running_gateway(settings) as gw:
        ref = make_reference(tmp / "ref.wav", seconds=4.0, f0=130.0).read_bytes()
        created = httpx.post(f"{gw.url}/v1/voices", headers=bearer(raws["admin"]), timeout=60,
                             data={"name": "anna", "prompt_text": "A sample.", "prompt_language": "en"},
                             files={"audio": ("ref.wav", ref)})
        assert created.status_code == 201, created.text
        yield gw, raws


def _speech(url: str, raw: str, *, stream: bool = False) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", headers=bearer(raw), timeout=60,
                      json={"model": "tts-1", "voice": "anna", "input": TEXT, "response_format": "wav",
                            "stream": stream})


def test_requests_per_minute_then_429_with_rate_headers(setup: tuple[GatewayServer, dict[str, str]]) -> None:
    gw, raws = setup
    for remaining in (4, 3, 2, 1, 0):
        response = httpx.get(f"{gw.url}/v1/models", headers=bearer(raws["rpm"]), timeout=10)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "5"
        assert response.headers["x-ratelimit-remaining"] == str(remaining)
        assert 1 <= int(response.headers["x-ratelimit-reset"]) <= 60
    refused = httpx.get(f"{gw.url}/v1/models", headers=bearer(raws["rpm"]), timeout=10)
    error = assert_error(refused, 429, "rate_limited", contains="5 requests per minute")
    assert error["limit"] == "requests_per_minute"
    assert 1 <= int(refused.headers["retry-after"]) <= 12  # one token per 12 s at 5 per minute
    assert refused.headers["x-ratelimit-remaining"] == "0" and refused.headers["x-ratelimit-limit"] == "5"
    other = httpx.get(f"{gw.url}/v1/models", headers=bearer(raws["other"]), timeout=10)
    assert other.status_code == 200 and other.headers["x-ratelimit-limit"] == "1000"  # the GATEWAY_KEY_RPM default


def test_requests_in_flight_are_capped_per_key(setup: tuple[GatewayServer, dict[str, str]]) -> None:
    gw, raws = setup
    go_on = threading.Event()
    answers: list[httpx.Response] = []

    def slow_body() -> Iterator[bytes]:
        yield b'{"model": "tts-1", "voice": "anna", '
        go_on.wait(20)
        yield b'"input": "", "response_format": "wav"}'

    def upload() -> None:
        answers.append(httpx.post(f"{gw.url}/v1/audio/speech", headers={**bearer(raws["one"]),
                                  "content-type": "application/json"}, content=slow_body(), timeout=30))

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        # the upload holds the key's one slot while its body trickles in
        wait_until(lambda: httpx.get(f"{gw.url}/v1/models", headers=bearer(raws["one"]), timeout=10).status_code
                   == 429, timeout=10)
        refused = httpx.get(f"{gw.url}/v1/voices", headers=bearer(raws["one"]), timeout=10)
        assert assert_error(refused, 429, "rate_limited", contains="1 requests in flight")["limit"] == "concurrency"
        assert refused.headers["retry-after"] == "1"
        assert httpx.get(f"{gw.url}/v1/voices", headers=bearer(raws["other"]), timeout=10).status_code == 200
    finally:
        go_on.set()
        thread.join(30)
    assert_error(answers[0], 422, "invalid_request")  # the empty input, once the body arrived
    assert httpx.get(f"{gw.url}/v1/models", headers=bearer(raws["one"]), timeout=10).status_code == 200


def test_a_stream_holds_its_slot_until_it_ends_or_its_client_leaves(
    setup: tuple[GatewayServer, dict[str, str]], engine: EngineProcess
) -> None:
    gw, raws = setup
    key = bearer(raws["one"])
    set_engine_faults(engine.url, segment_delay=0.5)
    try:
        with httpx.stream("POST", f"{gw.url}/v1/audio/speech", headers=key, timeout=60,
                          json={"voice": "anna", "input": TEXT, "response_format": "wav", "stream": True}) as resp:
            assert resp.status_code == 200
            chunks = resp.iter_bytes()
            body = next(chunks)
            assert_error(httpx.get(f"{gw.url}/v1/models", headers=key, timeout=10), 429, "rate_limited")
            body += b"".join(chunks)
        samples, rate = decode_wav(body)
        assert_speech(samples, rate, expected_rate=32000, min_seconds=1.0, max_seconds=15.0)
        assert httpx.get(f"{gw.url}/v1/models", headers=key, timeout=10).status_code == 200
        # a client that leaves mid-stream frees the slot too
        with httpx.stream("POST", f"{gw.url}/v1/audio/speech", headers=key, timeout=60,
                          json={"voice": "anna", "input": TEXT, "response_format": "wav", "stream": True}) as resp:
            next(resp.iter_bytes())
        wait_until(lambda: httpx.get(f"{gw.url}/v1/models", headers=key, timeout=10).status_code == 200, timeout=10)
    finally:
        set_engine_faults(engine.url, segment_delay=0.0)


def _assert_out_of_audio(response: httpx.Response) -> None:
    error = assert_error(response, 429, "rate_limited", contains="audio seconds for today")
    assert error["limit"] == "audio_seconds_per_day"
    assert 1 <= int(response.headers["retry-after"]) <= 86400  # until midnight UTC


def test_audio_seconds_per_day_count_whole_answers(setup: tuple[GatewayServer, dict[str, str]]) -> None:
    gw, raws = setup
    first = _speech(gw.url, raws["quota"])
    assert first.status_code == 200, first.text
    assert float(first.headers["x-audio-duration"]) > 1.0  # over the 1 s quota: this one passes, the next not
    _assert_out_of_audio(_speech(gw.url, raws["quota"]))
    clone = httpx.post(f"{gw.url}/v1/voice-clone", headers=bearer(raws["quota"]), timeout=30,
                       data={"text": "More.", "text_language": "en", "voice_id": "anna"})
    _assert_out_of_audio(clone)
    # what spends no audio still works
    assert httpx.get(f"{gw.url}/v1/voices", headers=bearer(raws["quota"]), timeout=10).status_code == 200
    assert _speech(gw.url, raws["other"]).status_code == 200
    cloned = httpx.post(f"{gw.url}/v1/voice-clone", headers=bearer(raws["clone-quota"]), timeout=60,
                        data={"text": TEXT, "text_language": "en", "voice_id": "anna"})
    assert cloned.status_code == 200 and cloned.json()["output_duration"] > 1.0, cloned.text
    _assert_out_of_audio(_speech(gw.url, raws["clone-quota"]))


def test_audio_seconds_per_day_count_streams(setup: tuple[GatewayServer, dict[str, str]]) -> None:
    gw, raws = setup
    streamed = _speech(gw.url, raws["stream-quota"], stream=True)
    assert streamed.status_code == 200 and len(streamed.content) > 32000 * 2  # over one second of PCM16
    # counted before the stream's last byte is sent: the very next request is refused
    _assert_out_of_audio(_speech(gw.url, raws["stream-quota"], stream=True))
    _assert_out_of_audio(_speech(gw.url, raws["stream-quota"]))


def test_jobs_count_against_the_key_that_submitted_them(setup: tuple[GatewayServer, dict[str, str]]) -> None:
    gw, raws = setup
    key = bearer(raws["job-quota"])
    body = {"voice": "anna", "segments": [{"text": TEXT, "language": "en"}]}
    accepted = httpx.post(f"{gw.url}/v1/jobs", headers=key, json=body, timeout=60)
    assert accepted.status_code == 202, accepted.text
    job_url = f"{gw.url}/v1/jobs/{accepted.json()['id']}"
    wait_until(lambda: httpx.get(job_url, headers=key, timeout=10).json()["status"] == "done", timeout=60)
    _assert_out_of_audio(httpx.post(f"{gw.url}/v1/jobs", headers=key, json=body, timeout=60))
    assert httpx.get(f"{job_url}/track", headers=key, timeout=30).status_code == 200  # its own audio: still served


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_the_token_bucket_refills_at_rpm_per_minute() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    limits = Limits(rpm=60)
    decisions = [await limiter.take_request("k", limits) for _ in range(61)]
    assert all(d.allowed for d in decisions[:60]) and not decisions[60].allowed
    assert decisions[59].remaining == 0 and round(decisions[59].reset) == 60
    assert round(decisions[60].retry_after, 6) == 1.0
    clock.now += 0.5
    assert not (await limiter.take_request("k", limits)).allowed
    clock.now += 0.5
    assert (await limiter.take_request("k", limits)).allowed
    clock.now += 3600  # refilled, but never above the bucket
    assert (await limiter.take_request("k", limits)).remaining == 59
    assert (await limiter.take_request("k", Limits(rpm=0))).allowed
    assert (await limiter.take_request("other", limits)).allowed


@pytest.mark.anyio
async def test_audio_seconds_reset_at_midnight_utc_and_slots_are_given_back() -> None:
    wall = FakeClock(86400 * 20000 + 86400 - 10)  # 10 s before a UTC midnight
    limiter = MemoryLimiter(wall=wall)
    limits = Limits(audio_seconds_per_day=5, concurrency=2)
    await limiter.add_audio("k", 4.0)
    assert (await limiter.audio_left("k", limits)).allowed
    await limiter.add_audio("k", 1.5)
    refused = await limiter.audio_left("k", limits)
    assert not refused.allowed and round(refused.retry_after) == 10
    wall.now += 11
    assert (await limiter.audio_left("k", limits)).allowed and limiter.audio_used("k") == 0
    assert (await limiter.enter("k", limits)).allowed and (await limiter.enter("k", limits)).allowed
    assert not (await limiter.enter("k", limits)).allowed
    await limiter.leave("k")
    assert (await limiter.enter("k", limits)).allowed
