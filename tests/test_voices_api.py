"""The voice library over HTTP: CRUD, reuse in synthesis, defaults, persistence, concurrency, hostile ids."""

from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import EngineProcess, assert_error, assert_speech, decode_wav, make_reference, running_engine


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with running_engine(flavor="v2") as proc:
        yield proc


@pytest.fixture
def gateway(engine: EngineProcess, tmp_path: Path) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(tmp_path / "shared", [engine.url])) as gw:
        yield gw


def create(url: str, reference: bytes, name: str, **fields: str) -> httpx.Response:
    data = {"name": name, "prompt_text": "Hello there.", "prompt_language": "en", **fields}
    return httpx.post(f"{url}/v1/voices", data=data, files={"audio": ("ref.wav", reference)}, timeout=30)


def test_voice_crud_and_reuse(gateway: GatewayServer, reference: bytes) -> None:
    created = create(gateway.url, reference, "Narrator", description="warm")
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["id"].startswith("voice_") and voice["name"] == "Narrator"
    assert voice["prompt_language"] == "en" and voice["reference_duration"] == pytest.approx(5.0, abs=0.3)

    assert httpx.get(f"{gateway.url}/v1/voices/{voice['id']}").json()["name"] == "Narrator"
    listed = httpx.get(f"{gateway.url}/v1/voices").json()["voices"]
    assert [v["id"] for v in listed] == [voice["id"]]
    assert httpx.get(f"{gateway.url}/v1/audio/voices").json() == {"voices": [{"id": voice["id"], "name": "Narrator"}]}

    audio = httpx.get(f"{gateway.url}/v1/voices/{voice['id']}/audio")
    samples, rate = decode_wav(audio.content)
    assert audio.headers["content-type"] == "audio/wav" and len(samples) / rate == pytest.approx(5.0, abs=0.3)

    cloned = httpx.post(
        f"{gateway.url}/v1/voice-clone", data={"text": "Reusing a saved voice.", "voice_id": voice["id"]}, timeout=60
    )
    assert cloned.status_code == 200, cloned.text
    assert cloned.json()["voice_id"] == voice["id"]
    assert cloned.json()["text_language"] == "auto"
    samples, rate = decode_wav(base64.b64decode(cloned.json()["output_audio_base64"]))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.8, max_seconds=6.0)

    assert_error(create(gateway.url, reference, "narrator"), 409, "voice_name_taken")
    assert httpx.delete(f"{gateway.url}/v1/voices/{voice['id']}").status_code == 204
    assert_error(httpx.get(f"{gateway.url}/v1/voices/{voice['id']}"), 404, "voice_not_found")
    assert create(gateway.url, reference, "narrator").status_code == 201  # the name is free again


def test_default_voice(gateway: GatewayServer, reference: bytes) -> None:
    voice = create(gateway.url, reference, "Default one").json()
    assert httpx.get(f"{gateway.url}/v1/voices/default").json() == {"voice_id": None}
    assert httpx.put(f"{gateway.url}/v1/voices/default", json={"voice_id": voice["id"]}).status_code == 200
    response = httpx.post(f"{gateway.url}/v1/voice-clone", data={"text": "No voice named."}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["voice_id"] == voice["id"]
    assert httpx.delete(f"{gateway.url}/v1/voices/default").status_code == 204
    response = httpx.post(f"{gateway.url}/v1/voice-clone", data={"text": "No voice named."}, timeout=60)
    assert_error(response, 422, "missing_reference")
    assert_error(httpx.put(f"{gateway.url}/v1/voices/default", json={"voice_id": "voice_0000000000000000"}),
                 404, "voice_not_found")


def test_voice_creation_errors(gateway: GatewayServer, reference: bytes, tmp_path: Path) -> None:
    short = make_reference(tmp_path / "s.wav", seconds=1.5).read_bytes()
    assert_error(create(gateway.url, short, "Too short"), 422, "reference_too_short")
    response = httpx.post(f"{gateway.url}/v1/voices", data={"name": "No audio"}, timeout=30)
    assert_error(response, 422, "missing_reference")
    assert_error(create(gateway.url, reference, "Bad lang", prompt_language="xx"), 422, "unsupported_language")
    assert_error(create(gateway.url, reference, "Path", ref_audio_path="/etc/passwd"), 422, "engine_path_not_allowed")


@pytest.mark.parametrize("hostile", ["..", "../../etc/passwd", "%2e%2e%2fvoices", "voice_../../x", "a%00b"])
def test_hostile_ids_never_escape(gateway: GatewayServer, hostile: str) -> None:
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{gateway.url}/v1/voices/{hostile}")
        assert response.status_code in (404, 405), response.text
        if response.status_code == 404:
            assert response.json()["error"]["code"] in {"voice_not_found", "not_found"}
    response = httpx.get(f"{gateway.url}/v1/voices/{hostile}/audio")
    assert response.status_code == 404
    assert b"root:" not in response.content


def test_voices_survive_a_restart_and_concurrent_creation(
    engine: EngineProcess, reference: bytes, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    with running_gateway(fast_settings(shared, [engine.url])) as first, running_gateway(
        fast_settings(shared, [engine.url])
    ) as second:
        names = [f"voice {i}" for i in range(12)]
        with concurrent.futures.ThreadPoolExecutor(8) as workers:
            # two gateways write the same library at once, racing on every name
            results = list(workers.map(lambda n: create((first, second)[hash(n) % 2].url, reference, n), names * 2))
        codes = sorted(r.status_code for r in results)
        assert codes == [201] * 12 + [409] * 12, codes
    with running_gateway(fast_settings(shared, [engine.url])) as restarted:
        listed = httpx.get(f"{restarted.url}/v1/voices").json()["voices"]
        assert sorted(v["name"] for v in listed) == sorted(names)
