"""Several references per voice: `aux_audio` on requests and voices reaches api_v2 engines as
`aux_ref_audio_paths`; api.py engines cannot use them (422, or an api_v2 engine is chosen in a mixed pool)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_support import GatewayServer, clone, fast_settings, running_gateway
from tests.support import EngineProcess, assert_error, engine_stats, make_reference, running_engine


@pytest.fixture(scope="module")
def extras(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Five distinct extra references (different pitches, so different content hashes)."""
    folder = tmp_path_factory.mktemp("aux")
    return [make_reference(folder / f"aux{i}.wav", seconds=3.5, f0=110.0 + 10 * i).read_bytes() for i in range(5)]


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(tmp_path_factory.mktemp("shared"), [engine_v2.url])) as gw:
        yield gw


def _files(reference: bytes, extras: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", ("ref.wav", reference, "audio/wav")),
            *[("aux_audio", (f"aux{i}.wav", data, "audio/wav")) for i, data in enumerate(extras)]]


def _data(**fields: str) -> dict[str, str]:
    return {"text": "Hello there.", "text_language": "en", "prompt_text": "A sample.", "prompt_language": "en",
            **fields}


def _sent_aux(engine: EngineProcess, gateway: GatewayServer) -> list[Path]:
    paths = [Path(p) for p in engine_stats(engine.url)["aux_ref_audio_paths"]]
    assert all(p.parent == gateway.settings.refs_dir.absolute() and p.is_file() for p in paths), paths
    return paths


def test_uploaded_aux_references_reach_the_engine(
    gateway: GatewayServer, engine_v2: EngineProcess, reference: bytes, extras: list[bytes]
) -> None:
    response = httpx.post(f"{gateway.url}/v1/voice-clone", data=_data(), files=_files(reference, extras[:2]),
                          timeout=60)
    assert response.status_code == 200, response.text
    sent = _sent_aux(engine_v2, gateway)
    assert len(sent) == 2 and len(set(sent)) == 2
    # the same references as base64 in JSON: taken in the same way, the same stored files
    body = {**_data(), "reference_audio_base64": base64.b64encode(reference).decode(),
            "aux_audio_base64": [base64.b64encode(data).decode() for data in extras[:2]]}
    response = httpx.post(f"{gateway.url}/v1/voice-clone", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert _sent_aux(engine_v2, gateway) == sent
    # and none when none is sent
    assert clone(gateway.url, reference, prompt_text="A sample.").status_code == 200
    assert _sent_aux(engine_v2, gateway) == []


def test_a_voice_keeps_its_aux_references(
    gateway: GatewayServer, engine_v2: EngineProcess, reference: bytes, extras: list[bytes]
) -> None:
    created = httpx.post(f"{gateway.url}/v1/voices", data={"name": "Layered", "prompt_text": "A sample.",
                                                           "prompt_language": "en"},
                         files=_files(reference, extras[:3]), timeout=60)
    assert created.status_code == 201, created.text
    voice = created.json()
    assert len(voice["aux_reference_sha256"]) == 3
    response = httpx.post(f"{gateway.url}/v1/audio/speech",
                          json={"input": "Hello there.", "voice": "Layered", "stream": False, "response_format": "wav"},
                          timeout=60)
    assert response.status_code == 200, response.text
    assert [p.stem for p in _sent_aux(engine_v2, gateway)] == voice["aux_reference_sha256"]
    # a request's own extras come after the voice's; together they must stay within the cap (4)
    response = httpx.post(f"{gateway.url}/v1/voice-clone", data=_data(voice_id=voice["id"]),
                          files=[("aux_audio", ("x.wav", extras[3], "audio/wav"))], timeout=60)
    assert response.status_code == 200, response.text
    assert len(_sent_aux(engine_v2, gateway)) == 4
    too_many = httpx.post(f"{gateway.url}/v1/voice-clone", data=_data(voice_id=voice["id"]),
                          files=[("aux_audio", (f"x{i}.wav", extras[3 + i], "audio/wav")) for i in range(2)],
                          timeout=60)
    assert_error(too_many, 422, "too_many_files", contains="the voice's 3 included")


def test_aux_references_are_checked_and_capped(gateway: GatewayServer, reference: bytes, extras: list[bytes],
                                               tmp_path: Path) -> None:
    five = httpx.post(f"{gateway.url}/v1/voice-clone", data=_data(), files=_files(reference, extras), timeout=60)
    assert_error(five, 422, "too_many_files", contains="at most 4")
    short = make_reference(tmp_path / "short.wav", seconds=1.0).read_bytes()
    bad = httpx.post(f"{gateway.url}/v1/voice-clone", data=_data(), files=_files(reference, [extras[0], short]),
                     timeout=60)
    error = assert_error(bad, 422, "reference_too_short", contains="aux_audio 2:")
    assert error["field"] == "aux_audio"
    not_b64 = httpx.post(f"{gateway.url}/v1/voice-clone", timeout=60, json={
        **_data(), "reference_audio_base64": base64.b64encode(reference).decode(), "aux_audio_base64": ["%%%"]})
    assert_error(not_b64, 422, "invalid_base64", contains="aux_audio 1: aux_audio_base64")


def test_api_py_engines_cannot_take_aux_references(
    engine_v2: EngineProcess, reference: bytes, extras: list[bytes], tmp_path: Path
) -> None:
    with running_engine(flavor="v1") as v1:
        with running_gateway(fast_settings(tmp_path / "only_v1", [v1.url])) as gw:
            response = httpx.post(f"{gw.url}/v1/voice-clone", data=_data(), files=_files(reference, extras[:1]),
                                  timeout=60)
            assert_error(response, 422, "no_capable_engine", contains="extra references (aux_audio: api_v2 only)")
        # a mixed pool sends them to the api_v2 engine, every time (api.py would have been next in turn)
        with running_gateway(fast_settings(tmp_path / "mixed", [v1.url, engine_v2.url])) as gw:
            for _ in range(2):
                response = httpx.post(f"{gw.url}/v1/voice-clone", data=_data(), files=_files(reference, extras[:1]),
                                      timeout=60)
                assert response.status_code == 200, response.text
                assert response.json()["engine"]["flavor"] == "v2"
