"""Rules of the streaming path and the OpenAI speech route, each pinned by a test that fails when it breaks.

Real CPU engines and real gateways on real sockets. Engines and gateways are shared per module; every
gateway here uses one shared dir, so the voices created once ("low", "high") are visible to all of them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.engine.stream import STOP_GRACE_MAX, EngineStream
from gateway.engine.types import EngineInfo
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.stream_support import (
    LONG,
    captured_logs,
    cuts_counted,
    port_of,
    raw_post,
    read_to_eof,
    readyz,
    requests_counted,
    send_queue_bytes,
)
from tests.support import (
    EngineProcess,
    assert_error,
    assert_speech,
    decode_wav,
    engine_stats,
    make_reference,
    measured_median_f0,
    pcm16,
    read_until_abort,
    running_engine,
    set_engine_faults,
    wait_until,
)

SHORT = "A short sentence for the rules."
# The stream time limit of the gateway used for the slow-reader rule (GATEWAY_MAX_REQUEST_SECONDS)
STREAM_LIMIT = 8.0


# ---------------------------------------------------------------------------------------------- helpers


def speech(gateway_url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway_url}/v1/audio/speech", json={"input": SHORT, **body}, timeout=120)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with running_engine("--debug-routes", flavor="v2") as proc:
        yield proc


@pytest.fixture(scope="module")
def gateway(engine: EngineProcess, shared: Path) -> Iterator[GatewayServer]:
    """The main gateway; creates the voices "low" (110 Hz reference) and "high" (220 Hz) for the module."""
    with running_gateway(fast_settings(shared, [engine.url])) as gw:
        voices = {}
        for name, f0 in (("low", 110.0), ("high", 220.0)):
            ref = make_reference(shared / f"src-{name}.wav", seconds=5.0, f0=f0).read_bytes()
            created = httpx.post(f"{gw.url}/v1/voices", files={"audio": ("ref.wav", ref)}, timeout=60,
                                 data={"name": name, "prompt_text": "A short sample.", "prompt_language": "en"})
            assert created.status_code == 201, created.text
            voices[name] = created.json()
        gw.app.state.test_voices = voices
        yield gw


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[EngineProcess]:
    """An engine that spends 0.5 s per text segment: long texts make long streams."""
    with running_engine("--debug-routes", "--segment-delay", "0.5", flavor="v2") as proc:
        yield proc


@pytest.fixture(scope="module")
def limited_gateway(slow_engine: EngineProcess, shared: Path, gateway: GatewayServer) -> Iterator[GatewayServer]:
    """On the slow engine, with a short stream time limit."""
    with running_gateway(fast_settings(shared, [slow_engine.url], max_request_seconds=STREAM_LIMIT)) as gw:
        yield gw


@pytest.fixture(scope="module")
def queue_gateway(slow_engine: EngineProcess, shared: Path, gateway: GatewayServer) -> Iterator[GatewayServer]:
    """On the slow engine, with the default (long) limits."""
    with running_gateway(fast_settings(shared, [slow_engine.url])) as gw:
        yield gw


# ---------------------------------------------------------------------------------------------- rule 6


def test_openai_stock_voice_names_mean_the_default_voice(gateway: GatewayServer) -> None:
    voices = gateway.app.state.test_voices
    assert_error(speech(gateway.url, voice="alloy"), 404, "voice_not_found", contains="'alloy' does not exist")
    high = voices["high"]
    assert httpx.put(f"{gateway.url}/v1/voices/default", json={"voice_id": high["id"]}).status_code == 200
    try:
        for stock in ("alloy", "Shimmer"):
            response = speech(gateway.url, voice=stock, response_format="wav", text_language="en")
            assert response.status_code == 200, response.text
            assert response.headers["x-voice-id"] == high["id"]
            assert response.headers["x-reference-id"] == high["reference_sha256"]
            samples, rate = decode_wav(response.content)
            assert_speech(samples, rate, expected_rate=32000, min_seconds=0.8, max_seconds=8.0)
            # the engine got the default voice's 220 Hz reference, not the 110 Hz one of "low"
            assert measured_median_f0(samples, rate) == pytest.approx(220.0, rel=0.12)
        # a name that is no stock voice still does not fall back
        assert_error(speech(gateway.url, voice="nobody"), 404, "voice_not_found", contains="'nobody' does not exist")
    finally:
        httpx.delete(f"{gateway.url}/v1/voices/default")


# ---------------------------------------------------------------------------------------------- rule 7


@pytest.mark.parametrize("route", ["/v1/audio/speech", "/v1/voice-clone"])
def test_engine_abort_mid_stream_aborts_the_client_stream(
    gateway: GatewayServer, engine: EngineProcess, route: str
) -> None:
    voice = gateway.app.state.test_voices["low"]
    if route == "/v1/audio/speech":
        kwargs: dict[str, Any] = {"json": {"input": LONG[:400], "voice": "low", "stream": True,
                                           "response_format": "wav", "text_language": "en"}}
    else:
        kwargs = {"data": {"text": LONG[:400], "voice_id": voice["id"], "stream": "true", "text_language": "en"}}
    cuts_before = cuts_counted(gateway.url, "engine")
    set_engine_faults(engine.url, fault="truncate")
    try:
        with captured_logs("gateway", "uvicorn.error") as logs:
            response, body = read_until_abort("POST", f"{gateway.url}{route}", **kwargs)
            wait_until(lambda: readyz(gateway.url)["engines"][0]["in_flight"] == 0)
    finally:
        set_engine_faults(engine.url, fault=None)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    # the engine's first chunk went through before its abort: this was mid-stream, not before the answer
    assert body[:4] == b"RIFF" and len(body) > 44 + 3200, len(body)
    # logged as one warning naming the request and the engine, not as an "Exception in ASGI application"
    request_id = response.headers["x-request-id"]
    cut = [r.getMessage() for r in logs.records if r.name == "gateway.services.streaming"]
    assert len(cut) == 1, cut
    assert request_id in cut[0] and engine.url in cut[0] and "aborted the stream" in cut[0], cut[0]
    assert not [r for r in logs.records if r.exc_info], [r.getMessage() for r in logs.records]
    assert cuts_counted(gateway.url, "engine") == cuts_before + 1


# ---------------------------------------------------------------------------------------------- rule 8


def test_a_client_that_stops_reading_is_cut_at_the_stream_limit(
    limited_gateway: GatewayServer, slow_engine: EngineProcess
) -> None:
    gw_port = port_of(limited_gateway.url)
    body = {"input": LONG, "voice": "low", "stream": True, "response_format": "pcm", "text_language": "en"}
    sock = raw_post(limited_gateway.url, "/v1/audio/speech", body, slow_reader=True)
    try:
        wait_until(lambda: engine_stats(slow_engine.url)["in_flight"] == 1)
        client_port = sock.getsockname()[1]
        # the client reads nothing: the gateway's socket backs up, so its body generator is stuck in `send`
        wait_until(lambda: send_queue_bytes(gw_port, client_port) > 0, timeout=STREAM_LIMIT + 10)
        # ... and yet the slot comes back at the limit (the engine would need 20 s and more for this text)
        wait_until(lambda: engine_stats(slow_engine.url)["in_flight"] == 0, timeout=STREAM_LIMIT + 20)
        # after the engine stopped, the gateway keeps the slot for its stop grace (at most STOP_GRACE_MAX)
        wait_until(lambda: readyz(limited_gateway.url)["free_slots"] == 1, timeout=STOP_GRACE_MAX + 10)
        following = speech(limited_gateway.url, voice="low", response_format="wav", text_language="en")
        assert following.status_code == 200, following.text
        samples, rate = decode_wav(following.content)
        assert_speech(samples, rate, expected_rate=32000, min_seconds=0.8, max_seconds=8.0)
        # what the stuck client finally reads is an aborted chunked body (no terminating chunk)
        received = read_to_eof(sock)
        assert received.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in received.lower()
        assert not received.endswith(b"\r\n0\r\n\r\n"), "the stream ended cleanly; it should have been cut"
    finally:
        sock.close()


@pytest.mark.parametrize("route", ["/v1/audio/speech", "/v1/voice-clone"])
def test_the_stream_limit_counts_from_the_requests_arrival(
    gateway: GatewayServer, engine: EngineProcess, route: str
) -> None:
    """A request already older than its X-Request-Timeout when it could be queued gets a 504 before any
    body, and the engine never sees it (the old rule gave the queue and the stream a fresh limit each)."""
    if route == "/v1/audio/speech":
        body: dict[str, Any] = {"input": SHORT, "voice": "low", "stream": True, "response_format": "wav",
                                "text_language": "en"}
    else:
        body = {"text": SHORT, "voice_id": gateway.app.state.test_voices["low"]["id"], "stream": True,
                "text_language": "en"}
    limit = 2.0
    data = json.dumps(body).encode()
    head = (f"POST {route} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"X-Request-Timeout: {limit}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    seen_by_engine = engine_stats(engine.url)["requests"]
    with socket.create_connection(("127.0.0.1", port_of(gateway.url))) as sock:
        sock.sendall(head.encode() + data[:-1])
        sent = time.monotonic()
        # Not a synchronisation: the request has to age past its limit while its upload is unfinished,
        # which only the clock can do (the gateway noted its arrival after `sent`).
        time.sleep(limit + 1.0 - (time.monotonic() - sent))
        sock.sendall(data[-1:])
        received = read_to_eof(sock)
    head_text, _, payload = received.partition(b"\r\n\r\n")
    assert head_text.startswith(b"HTTP/1.1 504 "), received[:300]
    error = json.loads(payload)["error"]
    assert error["code"] == "engine_timeout" and "already passed" in error["message"], error
    assert engine_stats(engine.url)["requests"] == seen_by_engine


# ---------------------------------------------------------------------------------------------- 499 while queued


@pytest.mark.parametrize("route", ["/v1/audio/speech", "/v1/voice-clone"])
def test_a_stream_whose_client_leaves_while_queued_never_reaches_the_engine(
    queue_gateway: GatewayServer, slow_engine: EngineProcess, gateway: GatewayServer, route: str
) -> None:
    url = queue_gateway.url
    gone_before = requests_counted(url, route, 499)
    busy = {"input": LONG, "voice": "low", "stream": True, "response_format": "pcm", "text_language": "en"}
    if route == "/v1/audio/speech":
        waiting: dict[str, Any] = {**busy, "input": SHORT}
    else:
        waiting = {"text": SHORT, "voice_id": gateway.app.state.test_voices["low"]["id"], "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/audio/speech", json=busy) as first:
        assert first.status_code == 200
        body = first.iter_raw()  # kept referenced: a dropped iterator would close the connection
        assert next(body)  # the only engine slot is taken by this stream
        queued = raw_post(url, route, waiting)
        try:
            wait_until(lambda: readyz(url)["queue_depth"] == 1)
            seen_by_engine = engine_stats(slow_engine.url)["requests"]
        finally:
            queued.close()  # the client leaves while its stream waits for a slot
        wait_until(lambda: readyz(url)["queue_depth"] == 0, timeout=10)
        wait_until(lambda: requests_counted(url, route, 499) == gone_before + 1, timeout=10)
    # The first client left too; the next request is served, and it is the only one the engine saw since:
    # a waiter wrongly kept would have been dispatched before it (the queue is FIFO).
    following = speech(url, voice="low", response_format="wav", text_language="en")
    assert following.status_code == 200, following.text
    samples, rate = decode_wav(following.content)
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.8, max_seconds=8.0)
    assert engine_stats(slow_engine.url)["requests"] == seen_by_engine + 1


# ---------------------------------------------------------------------------------------------- stop grace


def test_an_abandoned_stream_keeps_its_slot_well_past_the_slowest_chunk_wait() -> None:
    """The slot of a stream left early is kept until the engine has surely reached its next chunk: under
    load engines stopped up to ~1.9 × the slowest chunk wait after we closed, so the grace is at least
    twice that (up to a cap), also when the slow wait was seen on an earlier stream of the engine, and
    never past the engine's own deadline."""

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    async def graces() -> list[float]:
        now = asyncio.get_running_loop().time()
        result = []
        for first_wait, slowest_seen, deadline in ((0.5, 0.0, 60), (3.0, 0.0, 60), (0.1, 3.0, 60), (3.0, 0.0, 4.0)):
            stream = EngineStream(EngineInfo("http://engine", "v2"), 32000, b"", nothing(), now + deadline)
            stream.note_first_wait(first_wait)
            result.append(stream.stop_grace(slowest_seen))
        return result

    short, slow, slow_before, near_deadline = asyncio.run(graces())
    assert short >= 2 * 0.5 and slow >= 2 * 3.0 and slow_before >= 2 * 3.0, (short, slow, slow_before)
    assert slow <= STOP_GRACE_MAX and 3.0 < near_deadline <= 4.0, (slow, near_deadline)


# ---------------------------------------------------------------------------------------------- speech route


def test_sse_stream_format_is_refused(gateway: GatewayServer) -> None:
    response = speech(gateway.url, voice="low", stream=True, response_format="pcm", stream_format="sse")
    assert_error(response, 422, "invalid_request", contains="stream_format: Input should be 'audio'")


def test_speed_reaches_the_engine(gateway: GatewayServer) -> None:
    durations = {}
    for speed in (0.5, 1.0, 2.0):
        response = speech(gateway.url, voice="low", response_format="wav", text_language="en", speed=speed,
                          stream=False)
        assert response.status_code == 200, response.text
        samples, rate = decode_wav(response.content)
        assert_speech(samples, rate, expected_rate=32000, min_seconds=0.5, max_seconds=12.0)
        durations[speed] = len(samples) / rate
        assert float(response.headers["x-audio-duration"]) == pytest.approx(durations[speed], abs=0.01)
    assert durations[2.0] < 0.8 * durations[1.0] < 0.8 * 0.8 * durations[0.5], durations


@pytest.mark.parametrize(("fmt", "content_type"), [("wav", "audio/wav"), ("pcm", "audio/pcm")])
def test_streamed_content_type_per_format(gateway: GatewayServer, fmt: str, content_type: str) -> None:
    response = speech(gateway.url, voice="low", stream=True, response_format=fmt, text_language="en")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    samples, rate = decode_wav(response.content) if fmt == "wav" else (pcm16(response.content), 32000)
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.8, max_seconds=8.0)


def test_oversized_bodies_are_413(engine: EngineProcess, shared: Path, gateway: GatewayServer) -> None:
    limit = 100_000
    big = make_reference(shared / "big-src.wav", seconds=4.0).read_bytes()
    assert len(big) > limit
    voices_dir = shared / "voices"
    before = sorted(p.relative_to(voices_dir) for p in voices_dir.rglob("*"))
    with running_gateway(fast_settings(shared, [engine.url], max_upload_bytes=limit)) as gw:
        response = httpx.post(f"{gw.url}/v1/audio/speech", data={"input": SHORT, "text_language": "en"},
                              files={"reference_audio": ("r.wav", big)}, timeout=60)
        error = assert_error(response, 413, "payload_too_large",
                             contains=f"'reference_audio' is larger than the {limit} byte limit")
        assert error["limit_bytes"] == limit
        response = httpx.post(f"{gw.url}/v1/audio/speech", json={"input": "x" * 1_100_000, "voice": "low"},
                              timeout=60)
        assert_error(response, 413, "payload_too_large", contains="the limit is 1000000 bytes")
        response = httpx.post(f"{gw.url}/v1/voices", data={"name": "too big", "prompt_language": "en"},
                              files={"audio": ("r.wav", big)}, timeout=60)
        error = assert_error(response, 413, "payload_too_large",
                             contains=f"'audio' is larger than the {limit} byte limit")
        assert error["limit_bytes"] == limit
    assert sorted(p.relative_to(voices_dir) for p in voices_dir.rglob("*")) == before  # no claim, no record
