"""OpenAI-style streaming: `/v1/audio/speech` streams by default in every format; what the client sees
before and after the first byte when an engine fails. Real CPU engines, real gateways, the official SDK."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.audio_decode import FRAME_SAMPLES, decode_audio
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import (
    EngineProcess,
    assert_speech,
    engine_stats,
    make_reference,
    read_until_abort,
    running_engine,
    set_engine_faults,
    wait_until,
)

# Four text segments: with 0.4 s of engine time per segment the engine works ~1.6 s and more
TEXT = "The first sentence is short. A second one follows it. Then comes a third. The fourth ends it."
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
EXPECTED_RATE = {"opus": 48000}  # Opus decoders always give 48 kHz; the rest keep the engine's 32 kHz


def create_voice(gateway_url: str, shared: Path) -> None:
    ref = make_reference(shared / "src.wav", seconds=5.0, f0=150.0).read_bytes()
    created = httpx.post(f"{gateway_url}/v1/voices", files={"audio": ("ref.wav", ref)}, timeout=60,
                         data={"name": "anna", "prompt_text": "A short sample.", "prompt_language": "en"})
    assert created.status_code in (201, 409), created.text


def cuts_counted(gateway_url: str, reason: str) -> float:
    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    match = re.search(rf'^gateway_stream_cuts_total\{{reason="{reason}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[EngineProcess]:
    with running_engine("--debug-routes", "--segment-delay", "0.4", flavor="v2") as proc:
        yield proc


@pytest.fixture(scope="module")
def gateway(slow_engine: EngineProcess, shared: Path) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(shared, [slow_engine.url])) as gw:
        create_voice(gw.url, shared)
        yield gw


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_sdk_gets_every_format_while_the_engine_still_works_and_it_decodes_like_the_whole_clip(
    gateway: GatewayServer, slow_engine: EngineProcess, fmt: str
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)
    knobs = {"text_language": "en", "seed": 7}
    engine_busy_at_first_bytes = None
    body = bytearray()
    with client.audio.speech.with_streaming_response.create(
        model="gpt-sovits", voice="anna", input=TEXT, response_format=fmt, extra_body=knobs  # type: ignore[arg-type]
    ) as response:
        assert response.headers.get("x-audio-duration") is None  # not known before the end
        assert response.headers["x-engine"] == "e0"  # the engine's id, never its URL
        for chunk in response.iter_bytes():
            if engine_busy_at_first_bytes is None:
                # the engine is still synthesizing its later segments: the gateway did not wait for the clip
                engine_busy_at_first_bytes = engine_stats(slow_engine.url)["in_flight"] == 1
            body.extend(chunk)
    assert engine_busy_at_first_bytes, "the first bytes came only after the engine had finished"
    streamed, rate = decode_audio(bytes(body), fmt)
    expected_rate = EXPECTED_RATE.get(fmt, 32000)
    assert_speech(streamed, rate, expected_rate=expected_rate, min_seconds=2.0, max_seconds=20.0)

    whole = httpx.post(f"{gateway.url}/v1/audio/speech", timeout=60, json={
        "model": "gpt-sovits", "voice": "anna", "input": TEXT, "response_format": fmt, "stream": False, **knobs})
    assert whole.status_code == 200, whole.text
    whole_samples, whole_rate = decode_audio(whole.content, fmt)
    assert whole_rate == rate
    assert abs(len(streamed) - len(whole_samples)) <= FRAME_SAMPLES.get(fmt, 0), (len(streamed), len(whole_samples))
    # X-Audio-Duration is the engine's clip; codecs add at most their priming and last-frame padding
    assert float(whole.headers["x-audio-duration"]) == pytest.approx(len(whole_samples) / rate, abs=0.08)


def test_a_failure_before_the_first_byte_fails_over_unseen(shared: Path) -> None:
    with running_engine("--debug-routes", flavor="v2") as first, running_engine(
        "--debug-routes", flavor="v2"
    ) as second, running_gateway(fast_settings(shared, [first.url, second.url])) as gw:
        create_voice(gw.url, shared)
        set_engine_faults(first.url, fault="500")
        attempts = []
        for _ in range(3):  # selection rotates: one of these lands on the failing engine first
            response = httpx.post(f"{gw.url}/v1/audio/speech", timeout=60,
                                  json={"voice": "anna", "input": TEXT[:60], "text_language": "en"})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "audio/mpeg" and response.headers["x-engine"] == "e1"
            samples, rate = decode_audio(response.content, "mp3")
            assert_speech(samples, rate, expected_rate=32000, min_seconds=0.5, max_seconds=8.0)
            attempts.append(int(response.headers["x-engine-attempts"]))
        assert 2 in attempts, attempts
        assert cuts_counted(gw.url, "engine") == 0


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_a_failure_after_the_first_byte_cuts_the_body_and_is_counted(shared: Path, fmt: str) -> None:
    with running_engine("--debug-routes", flavor="v2") as engine, running_gateway(
        fast_settings(shared, [engine.url])
    ) as gw:
        create_voice(gw.url, shared)
        set_engine_faults(engine.url, fault="truncate")
        response, body = read_until_abort("POST", f"{gw.url}/v1/audio/speech",
                                          json={"voice": "anna", "input": TEXT, "response_format": fmt,
                                                "text_language": "en"})
        assert response.status_code == 200 and len(body) > 0
        wait_until(lambda: cuts_counted(gw.url, "engine") == 1)
        # the slot is back (waited for: an idle engine being probed at that moment shows no free slot)
        wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["free_slots"] == 1)


def test_stream_false_is_the_whole_clip_and_stream_default_follows_openai(gateway: GatewayServer) -> None:
    body = {"voice": "anna", "input": "Just a few words.", "text_language": "en"}
    whole = httpx.post(f"{gateway.url}/v1/audio/speech", json={**body, "stream": False}, timeout=60)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/mpeg"
    assert "content-length" in whole.headers and float(whole.headers["x-audio-duration"]) > 0.3
    streamed = httpx.post(f"{gateway.url}/v1/audio/speech", json=body, timeout=60)
    assert streamed.status_code == 200 and streamed.headers["content-type"] == "audio/mpeg"
    assert streamed.headers.get("transfer-encoding") == "chunked" and "x-audio-duration" not in streamed.headers

