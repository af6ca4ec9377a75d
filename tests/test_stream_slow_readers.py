"""A streaming client that stops reading cannot hold an engine (issue 9, item 9): the slot comes back when the
engine is done, the slow reader still gets its whole clip from the gateway's buffer, and a client that makes
no read progress for GATEWAY_STREAM_STALL_SECONDS is dropped. Real CPU engine, real gateways, raw sockets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.engine.stream import STOP_GRACE_MAX
from tests.gateway_support import fast_settings, running_gateway
from tests.stream_support import LONG, cuts_counted, raw_post, read_to_eof, readyz
from tests.support import (
    EngineProcess,
    assert_speech,
    engine_stats,
    make_reference,
    pcm16,
    running_engine,
    wait_until,
)


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked HTTP/1.1 response and whether it ended with its terminating chunk."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = bytearray()
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return bytes(body), False
        size = int(size_line, 16)
        if size == 0:
            return bytes(body), True
        if len(rest) < size + 2:
            return bytes(body + rest[:size]), False
        body += rest[:size]
        rest = rest[size + 2 :]
    return bytes(body), False



@pytest.fixture(scope="module")
def slow_engine() -> Iterator[EngineProcess]:
    """An engine that spends 0.5 s per text segment: long texts make long streams."""
    with running_engine("--debug-routes", "--segment-delay", "0.5", flavor="v2") as proc:
        yield proc


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, slow_engine: EngineProcess) -> Path:
    """A shared dir holding the voice "low" (all gateways of this module use it)."""
    shared = tmp_path_factory.mktemp("shared")
    with running_gateway(fast_settings(shared, [slow_engine.url])) as gw:
        ref = make_reference(shared / "src-low.wav", seconds=5.0, f0=110.0).read_bytes()
        created = httpx.post(f"{gw.url}/v1/voices", files={"audio": ("ref.wav", ref)}, timeout=60,
                             data={"name": "low", "prompt_text": "A short sample.", "prompt_language": "en"})
        assert created.status_code == 201, created.text
    return shared


# ~8 text segments: ~4 s of work for the slow engine, ~16 s of audio (about 1 MB of PCM: the buffer holds it)
MEDIUM = " ".join(f"Sentence number {n} is spoken here slowly." for n in range(8))


def test_a_client_that_stops_reading_gets_the_slot_back_when_the_engine_is_done(
    slow_engine: EngineProcess, shared: Path
) -> None:
    """The reader takes ~300 bytes and stops: the engine finishes into the gateway's buffer and its slot comes
    back at once (not at the stall limit, nor the request deadline); the reader, resuming, gets the whole clip."""
    settings = fast_settings(shared, [slow_engine.url], stream_stall_seconds=60.0)
    with running_gateway(settings) as gw:
        body = {"input": MEDIUM, "voice": "low", "response_format": "pcm", "text_language": "en"}
        sock = raw_post(gw.url, "/v1/audio/speech", body, slow_reader=True)
        try:
            sock.settimeout(30)
            assert sock.recv(300)
            wait_until(lambda: readyz(gw.url)["queue_depth"] == 0 and engine_stats(slow_engine.url)["in_flight"] == 1)
            started = time.monotonic()
            # the engine needs ~4 s; the stall limit is 60 s: a slot held for the reader would fail here
            wait_until(lambda: readyz(gw.url)["free_slots"] == 1, timeout=30)
            assert time.monotonic() - started < 30
            payload, complete = dechunk(read_to_eof(sock))
        finally:
            sock.close()
    assert complete, "the slow reader's stream was cut"
    assert_speech(pcm16(payload), 32000, expected_rate=32000, min_seconds=6.0, max_seconds=60.0)


def test_a_client_that_reads_nothing_is_dropped_after_the_stall_limit(
    slow_engine: EngineProcess, shared: Path
) -> None:
    """GATEWAY_STREAM_STALL_SECONDS: no read progress for that long drops the client, which frees the engine
    (it stops at its next chunk) long before the ~20 s this text would take."""
    settings = fast_settings(shared, [slow_engine.url], stream_stall_seconds=1.5)
    with running_gateway(settings) as gw:
        body = {"input": LONG, "voice": "low", "response_format": "pcm", "text_language": "en"}
        sock = raw_post(gw.url, "/v1/audio/speech", body, slow_reader=True)
        try:
            wait_until(lambda: engine_stats(slow_engine.url)["in_flight"] == 1)
            wait_until(lambda: cuts_counted(gw.url, "stall") == 1, timeout=15)
            wait_until(lambda: engine_stats(slow_engine.url)["in_flight"] == 0, timeout=10)
            wait_until(lambda: readyz(gw.url)["free_slots"] == 1, timeout=STOP_GRACE_MAX + 5)
            _, complete = dechunk(read_to_eof(sock))
        finally:
            sock.close()
    assert not complete, "the stream ended cleanly; it should have been cut"
