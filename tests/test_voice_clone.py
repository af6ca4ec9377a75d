"""`POST /v1/voice-clone` end to end: real CPU engine subprocesses, the real gateway on a real socket."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_support import CLONE_TEXT, GatewayServer, clone, fast_settings, running_gateway
from tests.support import assert_error, assert_speech, decode_wav, make_reference, running_engine


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def gateway(shared_dir: Path) -> Iterator[GatewayServer]:
    with running_engine(flavor="v2") as engine, running_gateway(fast_settings(shared_dir, [engine.url])) as gw:
        yield gw


def test_clone_returns_speech_with_metadata(gateway: GatewayServer, reference: bytes) -> None:
    response = clone(gateway.url, reference, prompt_text="A sample of my voice.")
    assert response.status_code == 200, response.text
    body = response.json()
    samples, rate = decode_wav(base64.b64decode(body["output_audio_base64"]))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=1.0, max_seconds=8.0)
    assert body["output_sample_rate"] == 32000
    assert body["output_duration"] == pytest.approx(len(samples) / rate, abs=0.01)
    assert body["task"] == "voice_clone" and body["service_available"] is True
    assert body["text_length"] == len(CLONE_TEXT)
    assert body["request_id"] == response.headers["x-request-id"]
    assert set(body["timings"]) == {"queue_wait", "reference_prep", "engine", "encode"}
    assert body["engine"]["flavor"] == "v2" and body["engine"]["id"] == "e0" and "url" not in body["engine"]
    assert body["rtf"] > 0 and body["processing_time"] >= body["timings"]["engine"]
    assert len(body["reference_id"]) == 64


def test_identical_references_reuse_one_file(gateway: GatewayServer, reference: bytes) -> None:
    first = clone(gateway.url, reference).json()["reference_id"]
    second = clone(gateway.url, reference).json()["reference_id"]
    assert first == second
    assert (gateway.settings.refs_dir / f"{first}.wav").is_file()


def test_json_body_with_base64_reference(gateway: GatewayServer, reference: bytes) -> None:
    payload = {
        "text": CLONE_TEXT,
        "text_language": "EN",  # normalised to the engine's lowercase code
        "prompt_language": "en",
        "reference_audio_base64": base64.b64encode(reference).decode(),
    }
    response = httpx.post(f"{gateway.url}/v1/voice-clone", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["text_language"] == "en"
    samples, rate = decode_wav(base64.b64decode(response.json()["output_audio_base64"]))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=1.0, max_seconds=8.0)


def test_request_id_is_propagated(gateway: GatewayServer, reference: bytes) -> None:
    response = clone(gateway.url, reference, headers={"X-Request-ID": "dub-42.line-7"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "dub-42.line-7"
    assert response.json()["request_id"] == "dub-42.line-7"


def test_short_and_long_references_are_rejected_with_the_duration(gateway: GatewayServer, tmp_path: Path) -> None:
    short = make_reference(tmp_path / "short.wav", seconds=2.0).read_bytes()
    error = assert_error(clone(gateway.url, short), 422, "reference_too_short")
    # measured after trimming the silent edges: the last syllable's 0.25 s silent tail less the 50 ms margin
    assert error["duration"] == 1.8
    assert error["message"] == "reference audio is 1.8 s after trimming silence; the engine accepts 3.0–10.0 s"
    long = make_reference(tmp_path / "long.wav", seconds=12.0).read_bytes()
    error = assert_error(clone(gateway.url, long), 422, "reference_too_long")
    assert error["duration"] == 11.8


def test_long_reference_can_be_trimmed_on_request(gateway: GatewayServer, tmp_path: Path) -> None:
    long = make_reference(tmp_path / "long.wav", seconds=12.0).read_bytes()
    response = clone(gateway.url, long, trim_reference="true")
    assert response.status_code == 200, response.text


def test_undecodable_and_empty_audio(gateway: GatewayServer) -> None:
    assert_error(clone(gateway.url, b"\x13\x37" * 5000), 415, "unsupported_audio")
    assert_error(clone(gateway.url, b""), 422, "empty_audio")


def test_missing_fields(gateway: GatewayServer, reference: bytes) -> None:
    response = httpx.post(f"{gateway.url}/v1/voice-clone", files={"audio": ("r.wav", reference)}, timeout=30)
    assert_error(response, 422, "invalid_request", contains="text")
    assert_error(clone(gateway.url, None), 422, "missing_reference", contains="voice_id")
    assert_error(clone(gateway.url, reference, text="   "), 422, "empty_text")
    # nothing to speak: the engine would answer its silence placeholder, so it is refused up front
    assert_error(clone(gateway.url, reference, text="... !?"), 422, "empty_text", contains="nothing to speak")


def test_client_cannot_name_an_engine_path(gateway: GatewayServer, reference: bytes) -> None:
    for field in ("ref_audio_path", "refer_wav_path", "aux_ref_audio_paths"):
        response = clone(gateway.url, reference, **{field: "/etc/passwd"})
        assert_error(response, 422, "engine_path_not_allowed", contains=field)
    payload = {"text": CLONE_TEXT, "ref_audio_path": "/etc/passwd"}
    response = httpx.post(f"{gateway.url}/v1/voice-clone", json=payload, timeout=30)
    assert_error(response, 422, "engine_path_not_allowed")


def test_unsupported_language_lists_the_allowed_codes(gateway: GatewayServer, reference: bytes) -> None:
    error = assert_error(clone(gateway.url, reference, text_language="klingon"), 422, "unsupported_language")
    assert "en" in error["supported"] and "klingon" in error["message"]


def test_bad_knob_values_are_422(gateway: GatewayServer, reference: bytes) -> None:
    assert_error(clone(gateway.url, reference, top_k="many"), 422, "invalid_request", contains="top_k")
    assert_error(clone(gateway.url, reference, speed="9"), 422, "invalid_request", contains="speed")
    assert_error(clone(gateway.url, reference, bogus="1"), 422, "invalid_request", contains="bogus")


def test_bad_request_timeout_header(gateway: GatewayServer, reference: bytes) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/voice-clone",
        data={"text": CLONE_TEXT},
        files={"audio": ("r.wav", reference)},
        headers={"X-Request-Timeout": "soon"},
        timeout=30,
    )
    assert_error(response, 422, "invalid_timeout")


def test_health_and_readiness(gateway: GatewayServer) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["shared_dir"]["writable"] is True
    assert body["engines"][0]["state"] in {"ready", "busy"}
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert "gateway_requests_total" in metrics


def test_unknown_route_uses_the_envelope(gateway: GatewayServer) -> None:
    assert_error(httpx.get(f"{gateway.url}/v1/nope"), 404, "not_found")
    assert_error(httpx.get(f"{gateway.url}/v1/voice-clone"), 405, "method_not_allowed")


def test_v1_flavour_engine(tmp_path: Path, reference: bytes) -> None:
    with running_engine(flavor="v1") as engine, running_gateway(fast_settings(tmp_path, [engine.url])) as gw:
        response = clone(gw.url, reference, prompt_text="A sample of my voice.")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["engine"]["flavor"] == "v1"
        samples, rate = decode_wav(base64.b64decode(body["output_audio_base64"]))
        assert_speech(samples, rate, expected_rate=32000, min_seconds=1.0, max_seconds=8.0)
        # api.py would silently swap in its default reference: reference-free mode is refused instead
        response = clone(gw.url, reference, prompt_text="")
        assert response.status_code == 422, response.text


def test_openapi_documents_the_streamed_bodies(gateway: GatewayServer) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    form = spec["paths"]["/v1/voice-clone"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"audio", "text", "text_language", "prompt_text", "top_k"} <= set(form["properties"])
    assert form["properties"]["audio"]["format"] == "binary"
    speech = spec["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"input", "voice", "response_format", "stream"} <= set(speech["properties"])


def test_ambiguous_or_stray_references_are_refused(gateway: GatewayServer, reference: bytes) -> None:
    both = clone(gateway.url, reference, reference_audio_base64=base64.b64encode(reference[:3000]).decode())
    assert_error(both, 422, "conflicting_reference")
    assert_error(clone(gateway.url, reference, voice_id="narrator"), 422, "conflicting_reference")
    stray = httpx.post(
        f"{gateway.url}/v1/voice-clone",
        data={"text": CLONE_TEXT},
        files={"audio": ("r.wav", reference), "reference": ("x.wav", reference)},
        timeout=30,
    )
    assert_error(stray, 422, "unexpected_file", contains="'reference'")
    payload = {"text": CLONE_TEXT, "reference_audio_base64": "data:audio/wav;base64"}  # a data: URL without data
    assert_error(httpx.post(f"{gateway.url}/v1/voice-clone", json=payload, timeout=30), 422, "invalid_base64")


def test_json_content_type_is_case_insensitive(gateway: GatewayServer, reference: bytes) -> None:
    payload = {"text": CLONE_TEXT, "text_language": "en",
               "reference_audio_base64": base64.b64encode(reference).decode()}
    response = httpx.post(
        f"{gateway.url}/v1/voice-clone",
        content=json.dumps(payload),
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def test_language_spellings_are_normalised(gateway: GatewayServer, reference: bytes) -> None:
    for spelling in ("EN", "en-US", "en_US"):
        response = clone(gateway.url, reference, text_language=spelling)
        assert response.status_code == 200, (spelling, response.text)
        assert response.json()["text_language"] == "en"
