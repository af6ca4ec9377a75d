"""The voice library over HTTP: CRUD, reuse in synthesis, defaults, persistence, concurrency, hostile ids."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
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


def raw_request(url: str, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with `path` sent byte for byte: httpx would normalise `..` and `%2e%2e` away
    before sending, so the route would never see them."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split(" ")[1]), headers, body


def tree_snapshot(top: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and directory under `top` with its mtime and content (directories: empty content)."""
    return {str(p.relative_to(top)): (p.stat().st_mtime_ns, b"" if p.is_dir() else p.read_bytes())
            for p in sorted(top.rglob("*"))}


#: One path segment after decoding: these reach the voice routes, which must answer voice_not_found.
HOSTILE_IDS = ["..", "%2e%2e", "%2E%2E", ".", "voice_..", "a%00b", "..%5c..%5cx", "voice_0000000000000000%00",
               "voice_0000000000000000.json"]
#: They decode to several segments: no voice route matches, so the router answers a plain not_found.
HOSTILE_PATHS = ["../../etc/passwd", "%2e%2e%2fvoices", "voice_../../x", "..%2F..%2Fetc%2Fpasswd", "../default"]


def test_hostile_ids_sent_as_raw_paths_never_escape(gateway: GatewayServer, reference: bytes, tmp_path: Path) -> None:
    kept = create(gateway.url, reference, "Kept").json()
    (tmp_path / "x.json").write_text("{}")  # where a traversal from the voices dir could land
    before = tree_snapshot(tmp_path)
    for hostile in HOSTILE_IDS + HOSTILE_PATHS:
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/audio")):
            status, headers, body = raw_request(gateway.url, method, f"/v1/voices/{hostile}{suffix}")
            where = f"{method} /v1/voices/{hostile}{suffix}"
            assert status == 404, (where, body)
            error = json.loads(body)["error"]
            assert error["request_id"] == headers["x-request-id"], where
            if hostile in HOSTILE_IDS:
                assert error["code"] == "voice_not_found" and error["message"].startswith("no voice with id "), (
                    where, error)
            else:
                assert (error["code"], error["message"]) == ("not_found", "Not Found"), (where, error)
    assert tree_snapshot(tmp_path) == before  # nothing created, changed or deleted, inside or outside
    assert [v["id"] for v in httpx.get(f"{gateway.url}/v1/voices").json()["voices"]] == [kept["id"]]


def test_voices_survive_a_restart_and_concurrent_creation(
    engine: EngineProcess, reference: bytes, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    with running_gateway(fast_settings(shared, [engine.url])) as first, running_gateway(
        fast_settings(shared, [engine.url])
    ) as second:
        names = [f"voice {i}" for i in range(12)]
        # every name goes to both gateways back to back: its two copies race through two stores on one dir
        jobs = [(name, gw) for name in names for gw in (first, second)]
        with concurrent.futures.ThreadPoolExecutor(8) as workers:
            results = list(workers.map(lambda job: create(job[1].url, reference, job[0]), jobs))
        for name in names:
            answers = [r for (n, _), r in zip(jobs, results, strict=True) if n == name]
            assert sorted(r.status_code for r in answers) == [201, 409], (name, [r.text for r in answers])
            assert_error(next(r for r in answers if r.status_code == 409), 409, "voice_name_taken")
    with running_gateway(fast_settings(shared, [engine.url])) as restarted:
        listed = httpx.get(f"{restarted.url}/v1/voices").json()["voices"]
        assert sorted(v["name"] for v in listed) == sorted(names)
