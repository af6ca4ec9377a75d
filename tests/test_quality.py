"""Quality checks on every whole clip, regeneration (`quality_retries`), `min_similarity`, through the real
gateway in front of a real CPU engine whose audio faults (`mute`, `short`, `endless`, `wrong_voice`) make
well-formed answers that are still wrong."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import soxr

from gateway.cpu_engine import adapt
from gateway.speaker import ENCODER_RATE, cosine
from tests.gateway_support import CLONE_TEXT, GatewayServer, clone, fast_settings, running_gateway
from tests.support import (
    EngineProcess,
    assert_error,
    assert_speech,
    decode_wav,
    running_engine,
    set_engine_faults,
    speech_like_signal,
)


class PitchEncoder:
    """A second, tiny SpeakerEncoder for tests: a Gaussian bump over a log-pitch grid at the clip's median F0
    (WORLD Harvest, as the CPU engine measures it). Two clips a semitone apart score ~0.97, an octave apart
    ~0.0: what a real encoder does for "same voice" and "another voice", in one dimension."""

    name = "pitch-test"
    dim = 48  # 50 Hz .. 800 Hz, 12 bins an octave

    def embed(self, samples: np.ndarray) -> np.ndarray:
        assert samples.dtype == np.float32 and samples.ndim == 1  # the interface's contract: 16 kHz mono float32
        f0 = adapt.median_f0(samples, ENCODER_RATE) or 50.0
        semitones = 12 * np.log2(f0 / 50.0)
        bump = np.exp(-((np.arange(self.dim) - semitones) ** 2) / (2 * 3.0**2))
        return (bump / np.linalg.norm(bump)).astype(np.float32)


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    """Our own engine: these tests set faults, which the shared one must never carry."""
    with running_engine("--debug-routes", flavor="v2") as engine:
        yield engine


@pytest.fixture(scope="module")
def gateway(engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(tmp_path_factory.mktemp("shared"), [engine.url])) as gw:
        yield gw


@pytest.fixture(autouse=True)
def no_faults(engine: EngineProcess) -> Iterator[None]:
    set_engine_faults(engine.url, fault=None, fault_count=None)
    yield
    set_engine_faults(engine.url, fault=None, fault_count=None)


@pytest.fixture
def encoder(gateway: GatewayServer) -> Iterator[PitchEncoder]:
    speakers = gateway.app.state.services.speakers
    speakers.install(encoder := PitchEncoder())
    yield encoder
    speakers.install(None)


def _ok_clone(gateway: GatewayServer, reference: bytes, **fields: str) -> tuple[dict[str, Any], httpx.Response]:
    response = clone(gateway.url, reference, prompt_text="A sample of my voice.", **fields)
    assert response.status_code == 200, response.text
    return response.json(), response


def test_a_clean_clip_passes_and_says_so(gateway: GatewayServer, reference: bytes) -> None:
    body, response = _ok_clone(gateway, reference)
    quality = body["quality"]
    assert quality["ok"] is True and quality["problems"] == []
    assert 0 < quality["silence"] < 0.5 and quality["clipping"] == 0
    assert quality["expected_seconds"] == pytest.approx(35 * 0.08)  # CLONE_TEXT: 35 letters, the English prior
    assert [a["ok"] for a in quality["attempts"]] == [True]
    assert response.headers["x-quality-ok"] == "true"
    assert (response.headers["x-quality-problems"], response.headers["x-quality-attempts"]) == ("none", "1")
    assert "x-quality-similarity" not in response.headers  # not measured without min_similarity


@pytest.mark.parametrize(("fault", "problem"), [("mute", "silent"), ("short", "too_short"), ("endless", "too_long")])
def test_a_bad_clip_is_flagged_not_refused(
    gateway: GatewayServer, engine: EngineProcess, reference: bytes, fault: str, problem: str
) -> None:
    set_engine_faults(engine.url, fault=fault)
    body, response = _ok_clone(gateway, reference)
    assert body["quality"]["ok"] is False and body["quality"]["problems"] == [problem]
    assert (response.headers["x-quality-ok"], response.headers["x-quality-problems"]) == ("false", problem)
    # the client still gets the audio: the flag is a report, the clip may be usable
    samples, _ = decode_wav(base64.b64decode(body["output_audio_base64"]))
    assert len(samples) > 0
    # and a flagged clip teaches the speaking-rate predictor nothing (an endless one would skew every guess)
    rates = gateway.app.state.services.speaking_rate
    learned = rates.predict(body["reference_id"], "en", CLONE_TEXT)
    _ok_clone(gateway, reference)
    assert rates.predict(body["reference_id"], "en", CLONE_TEXT) == learned


def test_speech_reports_quality_in_headers(gateway: GatewayServer, engine: EngineProcess, reference: bytes) -> None:
    set_engine_faults(engine.url, fault="short")
    response = httpx.post(
        f"{gateway.url}/v1/audio/speech",
        data={"input": "The quick brown fox jumps over the lazy dog.", "response_format": "wav", "stream": "false",
              "prompt_text": "A sample of my voice.", "prompt_language": "en"},
        files={"reference_audio": ("ref.wav", reference, "audio/wav")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert (response.headers["x-quality-ok"], response.headers["x-quality-problems"]) == ("false", "too_short")


def test_retries_regenerate_a_failing_clip_with_a_new_seed(
    gateway: GatewayServer, engine: EngineProcess, reference: bytes
) -> None:
    set_engine_faults(engine.url, fault="mute", fault_count=1)  # the next render only
    body, response = _ok_clone(gateway, reference, quality_retries="2", seed="7")
    quality = body["quality"]
    assert quality["ok"] is True
    attempts = quality["attempts"]
    assert [a["problems"] for a in attempts] == [["silent"], []]  # stopped at the first good one
    assert attempts[0]["seed"] == 7 and isinstance(attempts[1]["seed"], int) and attempts[1]["seed"] != 7
    assert quality["seed"] == attempts[1]["seed"]
    assert response.headers["x-quality-attempts"] == "2" and response.headers["x-quality-ok"] == "true"
    assert body["attempts"] == 2  # engine calls, both counted
    samples, rate = decode_wav(base64.b64decode(body["output_audio_base64"]))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=1.0, max_seconds=8.0)  # the good clip
    # a regenerated clip is not what seed 7 makes: it was not stored under seed 7's key
    again = clone(gateway.url, reference, prompt_text="A sample of my voice.", quality_retries="2", seed="7")
    assert again.headers["x-cache"] == "miss" and again.json()["quality"]["attempts"][0]["seed"] == 7
    assert clone(gateway.url, reference, prompt_text="A sample of my voice.", seed="7").headers["x-cache"] == "hit"


def test_when_every_attempt_fails_the_best_is_returned(
    gateway: GatewayServer, engine: EngineProcess, reference: bytes
) -> None:
    set_engine_faults(engine.url, fault="mute")  # every render
    body, response = _ok_clone(gateway, reference, quality_retries="1")
    assert body["quality"]["ok"] is False and len(body["quality"]["attempts"]) == 2
    assert response.headers["x-quality-attempts"] == "2"


def test_a_stored_failing_clip_is_not_served_to_a_request_that_allows_retries(
    gateway: GatewayServer, engine: EngineProcess, reference: bytes
) -> None:
    set_engine_faults(engine.url, fault="mute", fault_count=1)
    first, _ = _ok_clone(gateway, reference, seed="9")  # no retries: the silent clip is the answer, and stored
    assert first["quality"]["ok"] is False
    hit, response = _ok_clone(gateway, reference, seed="9")
    assert response.headers["x-cache"] == "hit" and hit["quality"]["problems"] == ["silent"]
    retried, response = _ok_clone(gateway, reference, seed="9", quality_retries="1")
    assert response.headers["x-cache"] == "miss" and retried["quality"]["ok"] is True


def test_wrong_voice_fails_min_similarity(
    gateway: GatewayServer, engine: EngineProcess, reference: bytes, encoder: PitchEncoder
) -> None:
    body, response = _ok_clone(gateway, reference, min_similarity="0.5")
    clean = body["quality"]
    assert clean["ok"] is True and clean["similarity"] > 0.8, clean  # the engine follows the reference's pitch
    assert float(response.headers["x-quality-similarity"]) == pytest.approx(clean["similarity"], abs=1e-4)
    set_engine_faults(engine.url, fault="wrong_voice", fault_count=1)
    body, _ = _ok_clone(gateway, reference, min_similarity="0.5", quality_retries="1")
    attempts = body["quality"]["attempts"]
    assert attempts[0]["problems"] == ["low_similarity"] and attempts[0]["similarity"] < 0.2
    assert attempts[1]["ok"] is True and attempts[1]["similarity"] > 0.8
    assert body["quality"]["ok"] is True


def test_min_similarity_without_an_encoder_is_501(gateway: GatewayServer, reference: bytes) -> None:
    gateway.app.state.services.speakers.install(None)  # as without the extra (test_speaker_embedding: for real)
    response = clone(gateway.url, reference, prompt_text="A sample.", min_similarity="0.7")
    assert_error(response, 501, "speaker_encoder_unavailable", contains="quality")
    speech = httpx.post(f"{gateway.url}/v1/audio/speech", timeout=60, json={
        "input": "Hello.", "voice": "missing-is-not-checked-first", "stream": False, "min_similarity": 0.7})
    assert_error(speech, 501, "speaker_encoder_unavailable")  # before any voice or reference work
    spec = httpx.get(f"{gateway.url}/openapi.json").json()["paths"]
    assert all("501" in spec[path]["post"]["responses"] for path in ("/v1/voice-clone", "/v1/audio/speech"))


@pytest.mark.parametrize(
    ("fields", "contains"),
    [({"quality_retries": "4"}, "quality_retries"), ({"min_similarity": "1.5"}, "min_similarity"),
     ({"quality_retries": "1", "stream": "true"}, "stream=false")],
)
def test_quality_fields_are_validated(
    gateway: GatewayServer, reference: bytes, fields: dict[str, str], contains: str
) -> None:
    response = clone(gateway.url, reference, prompt_text="A sample.", **fields)
    assert response.status_code == 422, response.text
    assert contains in response.json()["error"]["message"]


def test_voice_clone_audio_is_an_alias(gateway: GatewayServer, reference: bytes) -> None:
    encoded = base64.b64encode(reference).decode()
    body = {"text": "Hello there.", "text_language": "en", "prompt_text": "A sample.", "prompt_language": "en"}
    response = httpx.post(f"{gateway.url}/v1/voice-clone", json={**body, "voice_clone_audio": encoded}, timeout=60)
    assert response.status_code == 200, response.text
    samples, rate = decode_wav(base64.b64decode(response.json()["output_audio_base64"]))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.3, max_seconds=5.0)
    both = httpx.post(f"{gateway.url}/v1/voice-clone",
                      json={**body, "voice_clone_audio": encoded, "reference_audio_base64": encoded}, timeout=60)
    assert_error(both, 422, "conflicting_reference", contains="voice_clone_audio")


def _resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    return np.asarray(soxr.resample(samples, rate, ENCODER_RATE), dtype=np.float32)


def test_pitch_encoder_tells_voices_apart() -> None:
    """The test encoder itself: same pitch → ~1, far pitch → ~0 (so the similarity test means something)."""
    low, high = speech_like_signal(2.0, 32000, f0=120.0), speech_like_signal(2.0, 32000, f0=264.0)
    enc = PitchEncoder()
    assert cosine(enc.embed(_resampled(low, 32000)), enc.embed(_resampled(low * 0.5, 32000))) > 0.99
    assert cosine(enc.embed(_resampled(low, 32000)), enc.embed(_resampled(high, 32000))) < 0.05
