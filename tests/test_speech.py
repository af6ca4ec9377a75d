"""OpenAI-compatible speech: the official SDK unchanged, every output format, whole and streamed (the default;
more streaming rules in test_speech_streaming.py and test_stream_rules.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from gateway.audio.wav import parse_streaming_header
from tests.audio_decode import decode_audio
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import assert_error, assert_speech, decode_wav, make_reference, running_engine, wait_until

INPUT = "Streaming speech arrives while the engine is still talking. Then a second sentence follows."


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    shared = tmp_path_factory.mktemp("shared")
    with running_engine(flavor="v2") as engine, running_gateway(fast_settings(shared, [engine.url])) as gw:
        ref = make_reference(shared / "ref-src.wav", seconds=5.0, f0=150.0).read_bytes()
        created = httpx.post(
            f"{gw.url}/v1/voices",
            data={"name": "anna", "prompt_text": "A short sample.", "prompt_language": "en"},
            files={"audio": ("ref.wav", ref)},
        )
        assert created.status_code == 201, created.text
        gw.app.state.test_voice_id = created.json()["id"]
        yield gw


@pytest.fixture
def client(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)


def test_sdk_round_trip_by_name_and_id(client: openai.OpenAI, gateway: GatewayServer) -> None:
    audio = client.audio.speech.create(model="gpt-sovits", voice="anna", input="Hello from the SDK.",
                                       response_format="wav")
    samples, rate = decode_wav(audio.content)
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.5, max_seconds=5.0)
    voice_id = gateway.app.state.test_voice_id
    audio = client.audio.speech.create(model="tts-1", voice={"id": voice_id}, input="By id.", response_format="flac")
    samples, rate = decode_audio(audio.content, "flac")  # a FLAC stream: libsndfile cannot read its unknown length
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.3, max_seconds=4.0)


def test_sdk_streaming_response(client: openai.OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="gpt-sovits", voice="anna", input=INPUT, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        body = b"".join(response.iter_bytes())
    rate, channels, bits = parse_streaming_header(body[:44])
    assert (rate, channels, bits) == (32000, 1, 16)
    samples, decoded_rate = decode_wav(body)  # players accept the streaming header
    assert_speech(samples, decoded_rate, expected_rate=32000, min_seconds=2.0, max_seconds=15.0)


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("flac", "audio/flac"), ("wav", "audio/wav"),
     ("pcm", "audio/pcm"), ("aac", "audio/aac")],
)
def test_every_format_decodes_at_the_right_rate(gateway: GatewayServer, fmt: str, content_type: str) -> None:
    response = httpx.post(f"{gateway.url}/v1/audio/speech", timeout=60,
                          json={"model": "gpt-sovits", "voice": "anna", "input": "One format at a time.",
                                "response_format": fmt, "stream": False})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    data = response.content
    if fmt == "pcm":
        samples, rate = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, 32000
    elif fmt in ("aac", "mp3"):
        samples, rate = decode_audio(data, fmt)
    else:
        samples, rate = decode_wav(data)  # libsndfile reads the whole clip's FLAC (its length is in the header)
    expected = 48000 if fmt == "opus" else 32000
    assert_speech(samples, rate, expected_rate=expected, min_seconds=0.5, max_seconds=5.0)


def test_sample_rate_option(gateway: GatewayServer) -> None:
    body = {"model": "gpt-sovits", "voice": "anna", "input": "Resampled.", "response_format": "wav",
            "sample_rate": 24000, "stream": False}
    response = httpx.post(f"{gateway.url}/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 200 and response.headers["x-sample-rate"] == "24000"
    samples, rate = decode_wav(response.content)
    assert_speech(samples, rate, expected_rate=24000, min_seconds=0.3, max_seconds=4.0)
    body["stream"] = True
    response = httpx.post(f"{gateway.url}/v1/audio/speech", json=body, timeout=60)
    samples, rate = decode_wav(response.content)
    assert_speech(samples, rate, expected_rate=24000, min_seconds=0.3, max_seconds=4.0)


def test_multipart_variant_with_reference_audio(gateway: GatewayServer, tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "r.flac", seconds=4.0, fmt="FLAC").read_bytes()
    response = httpx.post(
        f"{gateway.url}/v1/audio/speech",
        data={"model": "gpt-sovits", "input": "Uploaded reference.", "response_format": "wav",
              "reference_text": "", "text_language": "en"},
        files={"reference_audio": ("r.flac", ref, "audio/flac")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    samples, rate = decode_wav(response.content)
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.5, max_seconds=5.0)


def test_unsupported_combinations_list_what_is_supported(gateway: GatewayServer) -> None:
    url = f"{gateway.url}/v1/audio/speech"
    for stream in (True, False):
        m4a = {"input": "x", "voice": "anna", "response_format": "m4a", "stream": stream}
        error = assert_error(httpx.post(url, json=m4a), 400, "unsupported_format", contains="mp3, opus")
        assert error["supported"] == ["wav", "mp3", "opus", "flac", "aac", "pcm"]
    odd_rate = {"input": "x", "voice": "anna", "sample_rate": 7000}
    assert_error(httpx.post(url, json=odd_rate), 422, "invalid_request", contains="sample_rate")
    assert_error(httpx.post(url, json={"input": "x", "voice": "nobody"}), 404, "voice_not_found", contains="anna")
    assert_error(httpx.post(url, json={"voice": "anna"}), 422, "invalid_request", contains="input")


def test_models_and_voices_listing(client: openai.OpenAI, gateway: GatewayServer) -> None:
    assert "gpt-sovits" in [m.id for m in client.models.list()]
    voices = httpx.get(f"{gateway.url}/v1/audio/voices").json()["voices"]
    assert {"id": gateway.app.state.test_voice_id, "name": "anna"} in voices


def test_first_bytes_arrive_before_the_engine_finishes(tmp_path: Path) -> None:
    """With a slow engine (1 s per text segment), audio must flow before the whole clip exists."""
    with running_engine("--segment-delay", "1.0", flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        ref = make_reference(tmp_path / "ref.wav", seconds=4.0).read_bytes()
        text = "First sentence here. Second sentence there. Third sentence at last. Fourth one ends it."
        started = time.monotonic()
        arrivals: list[float] = []
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/audio/speech",
            data={"input": text, "response_format": "pcm", "stream": "true", "text_language": "en"},
            files={"reference_audio": ("r.wav", ref)},
            timeout=60,
        ) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                if chunk:
                    arrivals.append(time.monotonic() - started)
        total = arrivals[-1]
        # the first audio arrives well before the last: the clip was not buffered in the gateway
        assert arrivals[0] < total * 0.6, (arrivals[0], total)


def test_stream_client_leaving_stops_the_engine(tmp_path: Path) -> None:
    with running_engine("--segment-delay", "1.0", "--debug-routes", flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        ref = make_reference(tmp_path / "ref.wav", seconds=4.0).read_bytes()
        text = " ".join(f"Sentence number {n} is here." for n in range(12))  # ~12 s of engine time
        with httpx.stream("POST", f"{gw.url}/v1/voice-clone",
                          data={"text": text, "text_language": "en", "stream": "true"},
                          files={"audio": ("r.wav", ref)}, timeout=60) as response:
            assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
            first = next(response.iter_raw())
            assert first[:4] == b"RIFF"
        # the client left after the first bytes: the engine stops at its next chunk, long before 12 s of work is
        # done; the gateway frees the slot after its drain grace (at most 15 s), never before the engine stopped
        wait_until(lambda: httpx.get(f"{engine.url}/_stats").json()["in_flight"] == 0, timeout=6)
        wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["engines"][0]["in_flight"] == 0, timeout=16)


def test_speech_refuses_stray_file_fields(gateway: GatewayServer, tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "r.wav", seconds=4.0).read_bytes()
    response = httpx.post(
        f"{gateway.url}/v1/audio/speech",
        data={"input": "A stray file.", "voice": "anna"},
        files={"audio": ("r.wav", ref)},  # voice-clone's field name, not speech's
        timeout=30,
    )
    assert_error(response, 422, "unexpected_file", contains="reference_audio")


def test_speech_headers_name_the_engine_and_attempts(gateway: GatewayServer) -> None:
    body = {"model": "gpt-sovits", "voice": "anna", "input": "Headers.", "response_format": "wav"}
    for stream in (False, True):
        response = httpx.post(f"{gateway.url}/v1/audio/speech", json={**body, "stream": stream}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["x-engine"] == "e0"  # the id, never the URL
        assert response.headers["x-engine-attempts"] == "1"
        assert response.headers["x-voice-id"] == gateway.app.state.test_voice_id
        assert response.headers["x-sample-rate"] == "32000"
        # a stream's length is not known when its headers leave
        assert ("x-audio-duration" in response.headers) is not stream


def test_api_py_engine_streams_through_the_gateway(tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "ref.wav", seconds=5.0).read_bytes()
    text = "An api dot py engine answers in one piece. The gateway streams it on."
    with running_engine(flavor="v1") as engine, running_gateway(fast_settings(tmp_path, [engine.url])) as gw:
        response = httpx.post(
            f"{gw.url}/v1/audio/speech",
            data={"input": text, "stream": "true", "response_format": "wav", "text_language": "en",
                  "reference_text": "A sample of my voice.", "prompt_language": "en"},
            files={"reference_audio": ("r.wav", ref)}, timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "audio/wav" and response.headers["x-sample-rate"] == "32000"
        samples, rate = decode_wav(response.content)
        assert_speech(samples, rate, expected_rate=32000, min_seconds=2.0, max_seconds=12.0)
        response = httpx.post(
            f"{gw.url}/v1/voice-clone",
            data={"text": text, "stream": "true", "text_language": "en", "prompt_text": "A sample of my voice."},
            files={"audio": ("r.wav", ref)}, timeout=120,
        )
        assert response.status_code == 200, response.text
        samples, rate = decode_wav(response.content)
        assert_speech(samples, rate, expected_rate=32000, min_seconds=2.0, max_seconds=12.0)
