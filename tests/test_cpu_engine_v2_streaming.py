"""The CPU engine's api_v2 streaming (engine-protocol.md §3.4, §3.6) and its one-request-at-a-time lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.cpu_engine.framing import encode_ogg, streaming_pieces
from tests.support import (
    EngineProcess,
    assert_speech,
    decode_wav,
    make_reference,
    pcm16,
    read_until_abort,
    running_engine,
    tts_params,
    wait_until,
    wav_stream_header,
)


@pytest.fixture
def client(engine_v2: EngineProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine_v2.url, timeout=60) as session:
        yield session


# --- streaming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [1, 2, 3, True])
def test_streaming_wav_framing(client: httpx.Client, ref: Path, mode: int | bool) -> None:
    text = "The first sentence is here. And a second one follows it."
    with client.stream("POST", "/tts", json=tts_params(ref, text=text, streaming_mode=mode)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        body = response.read()
    assert body[:44] == wav_stream_header(32000)
    assert_speech(pcm16(body[44:]), 32000, expected_rate=32000, min_seconds=2.0, max_seconds=12.0)


def test_streaming_raw_has_no_header(client: httpx.Client, ref: Path) -> None:
    response = client.get("/tts", params=tts_params(ref, media_type="raw", streaming_mode=3))
    assert response.headers["content-type"] == "audio/raw"
    assert "content-length" not in response.headers
    assert response.content[:4] != b"RIFF"
    assert_speech(pcm16(response.content), 32000, expected_rate=32000, min_seconds=1.0, max_seconds=8.0)


def test_streaming_ogg_chunks_are_complete_streams(client: httpx.Client, ref: Path) -> None:
    text = "The first sentence is here. And a second one follows it."
    response = client.post("/tts", json=tts_params(ref, text=text, media_type="ogg", streaming_mode=1))
    assert response.headers["content-type"] == "audio/ogg"
    # One complete Ogg Vorbis stream per segment: each starts with a beginning-of-stream page.
    assert response.content.count(b"OggS\x00\x02") == 2
    samples, rate = decode_wav(response.content)
    assert rate == 32000 and samples.ndim == 1 and len(samples) > 0


def test_streaming_errors_abort_the_body_after_200(client: httpx.Client, tmp_path: Path) -> None:
    short = make_reference(tmp_path / "short.wav", seconds=1.0)
    for ref in (tmp_path / "missing.wav", short):
        url = str(client.base_url.join("/tts"))
        response, received = read_until_abort("POST", url, json=tts_params(ref, streaming_mode=2))
        assert response.status_code == 200
        assert received == b""


def test_false_streaming_mode_is_a_whole_file(client: httpx.Client, ref: Path) -> None:
    response = client.get("/tts", params=tts_params(ref, streaming_mode="false"))
    assert response.status_code == 200
    assert "content-length" in response.headers


# --- one request at a time, stats ----------------------------------------------------------------------


def test_two_parallel_requests_are_served_one_after_the_other(tmp_path: Path) -> None:
    """Both requests are in flight at once (max_in_flight 2) but their syntheses never overlap: with a
    1.5 s synthesis delay, the second can only finish at least one delay after the first."""
    ref = make_reference(tmp_path / "ref.wav")
    with running_engine("--debug-routes", "--delay", "1.5") as engine:
        finished: dict[str, float] = {}

        def call(name: str) -> None:
            response = httpx.post(f"{engine.url}/tts", json=tts_params(ref, text="Hi there."), timeout=60)
            assert response.status_code == 200
            finished[name] = time.monotonic()

        first = threading.Thread(target=call, args=("first",))
        first.start()
        wait_until(lambda: httpx.get(f"{engine.url}/_stats").json()["in_flight"] == 1)
        second = threading.Thread(target=call, args=("second",))
        second.start()
        first.join()
        second.join()
        stats = httpx.get(f"{engine.url}/_stats").json()
    assert stats["max_in_flight"] == 2 and stats["in_flight"] == 0 and stats["requests"] == 2
    assert finished["second"] - finished["first"] >= 1.4


def test_stream_releases_the_engine_when_the_client_leaves(engine_v2: EngineProcess, ref: Path) -> None:
    text = " ".join(["This sentence keeps the stream going for a while."] * 6)
    with httpx.Client(base_url=engine_v2.url, timeout=60) as client:
        with client.stream("POST", "/tts", json=tts_params(ref, text=text, streaming_mode=3)) as response:
            first = next(response.iter_raw())
            assert first[:4] == b"RIFF"
        # Leaving the block closed the connection mid-stream; the next request must get the engine.
        after = client.post("/tts", json=tts_params(ref, text="Next."))
        assert after.status_code == 200
        wait_until(lambda: client.get("/_stats").json()["in_flight"] == 0)


# --- chunking and encoding as pure functions (chunk boundaries do not survive TCP, so check them here) ----


def test_streaming_pieces_follow_min_chunk_length() -> None:
    rate = 32000
    segment = np.sin(np.linspace(0, 2000, 3 * rate)).astype(np.float32)  # 3 s, one text segment
    size = 16 * 1280  # 16 tokens of 40 ms at 32 kHz
    fixed = [len(piece) for piece in streaming_pieces([segment], 3, rate, 16, 1.0)]
    assert fixed[:-1] == [size] * (len(fixed) - 1) and 0 < fixed[-1] <= size and sum(fixed) == len(segment)
    faster = [len(piece) for piece in streaming_pieces([segment], 3, rate, 16, 2.0)]
    assert faster[0] == size // 2
    pauses = [len(piece) for piece in streaming_pieces([segment], 2, rate, 16, 1.0)]
    assert all(size <= n <= 2 * size for n in pauses[:-1]) and sum(pauses) == len(segment)
    assert [len(p) for p in streaming_pieces([segment, segment[:100]], 1, rate, 16, 1.0)] == [len(segment), 100]


def test_long_vorbis_clip_is_encoded_in_blocks() -> None:
    """libsndfile crashes on ~60 s of Vorbis at 48 kHz in one write; the encoder must survive 70 s."""
    rate = 48000
    clip = (0.1 * np.sin(2 * np.pi * 220 * np.arange(70 * rate) / rate)).astype(np.float32)
    samples, decoded_rate = decode_wav(encode_ogg(clip, rate))
    assert decoded_rate == rate and abs(len(samples) - len(clip)) < rate // 10
