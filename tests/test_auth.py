"""API keys through a real gateway: open routes, 401/403 with the envelope, Bearer and X-API-Key (the official
OpenAI SDK's api_key), admin scope on voice and job changes, env keys, the keys file reloaded on change, and
the open mode that only runs on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import Request

from gateway.app import create_app
from gateway.auth import AuthConfigError, is_admin
from tests.auth_support import bearer, write_keys
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import EngineProcess, assert_error, assert_speech, decode_wav, make_reference

ENV_ADMIN, ENV_SYNTH = "env-admin-key-0123456789", "env-synth-key-0123456789"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    return path, write_keys(path, {"admin": ("admin", {}), "synth": ("synthesize", {})})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, dict[str, str]], engine_v2: EngineProcess
            ) -> Iterator[GatewayServer]:
    shared = tmp_path_factory.mktemp("shared")
    settings = fast_settings(shared, [engine_v2.url], api_keys_file=keys[0],
                             api_keys=f"{ENV_ADMIN},{ENV_SYNTH}:synthesize")
    with running_gateway(settings) as gw:

        @gw.app.get("/_test/whoami")
        async def whoami(request: Request) -> dict[str, object]:
            return {"key_id": request.state.key_id, "admin": is_admin(request)}

        yield gw


def test_probes_docs_metrics_and_the_page_need_no_key(gateway: GatewayServer) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc", "/", "/static/api.js"):
        response = httpx.get(f"{gateway.url}{path}", timeout=10)
        assert response.status_code in (200, 503), (path, response.status_code)  # readyz: 503 until probed
    docs = httpx.get(f"{gateway.url}/docs", timeout=10).text
    asset = docs.split("/static-offline-docs/", 1)[1].split('"', 1)[0]
    assert httpx.get(f"{gateway.url}/static-offline-docs/{asset}", timeout=10).status_code == 200


def test_a_missing_or_unknown_key_is_401_with_the_envelope(gateway: GatewayServer) -> None:
    missing = httpx.get(f"{gateway.url}/v1/voices", timeout=10)
    assert_error(missing, 401, "unauthorized", contains="missing API key")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(f"{gateway.url}/v1/voices", headers=bearer("sk-sovits-not-a-key"), timeout=10)
    assert_error(wrong, 401, "unauthorized", contains="unknown API key")
    assert "sk-sovits-not-a-key" not in wrong.text
    basic = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": "Basic dXNlcjpwYXNz"}, timeout=10)
    assert_error(basic, 401, "unauthorized")
    # a request refused before routing is still counted (and the body is never read)
    post = httpx.post(f"{gateway.url}/v1/audio/speech", json={"input": "x"}, timeout=10)
    assert_error(post, 401, "unauthorized")


def test_bearer_and_x_api_key_both_work_and_name_the_key(
    gateway: GatewayServer, keys: tuple[Path, dict[str, str]]
) -> None:
    raw = keys[1]["synth"]
    for headers in (bearer(raw), {"X-API-Key": raw}, {"authorization": f"bearer  {raw}"}):
        response = httpx.get(f"{gateway.url}/_test/whoami", headers=headers, timeout=10)
        assert response.json() == {"key_id": "synth", "admin": False}, headers
    admin = httpx.get(f"{gateway.url}/_test/whoami", headers={"X-API-Key": keys[1]["admin"]}, timeout=10)
    assert admin.json() == {"key_id": "admin", "admin": True}
    env = httpx.get(f"{gateway.url}/_test/whoami", headers=bearer(ENV_ADMIN), timeout=10).json()
    assert env["admin"] is True and env["key_id"].startswith("env-") and ENV_ADMIN not in env["key_id"]


def test_the_openai_sdk_api_key_just_works(gateway: GatewayServer, keys: tuple[Path, dict[str, str]],
                                          tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "ref.wav", seconds=4.0, f0=140.0).read_bytes()
    created = httpx.post(f"{gateway.url}/v1/voices", headers=bearer(keys[1]["admin"]), timeout=60,
                         data={"name": "sdk-voice", "prompt_text": "A sample.", "prompt_language": "en"},
                         files={"audio": ("ref.wav", ref)})
    assert created.status_code == 201, created.text
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=keys[1]["synth"], max_retries=0)
    audio = client.audio.speech.create(model="tts-1", voice="sdk-voice", input="Keys work.", response_format="wav")
    samples, rate = decode_wav(audio.content)
    assert_speech(samples, rate, expected_rate=32000, min_seconds=0.3, max_seconds=5.0)
    stranger = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.audio.speech.create(model="tts-1", voice="sdk-voice", input="No.", response_format="wav")
    assert caught.value.status_code == 401


def test_voice_and_job_changes_need_the_admin_scope(
    gateway: GatewayServer, keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    url, synth, admin = gateway.url, bearer(keys[1]["synth"]), bearer(keys[1]["admin"])
    ref = make_reference(tmp_path / "ref.wav", seconds=4.0).read_bytes()
    form = {"name": "scoped", "prompt_text": "A sample.", "prompt_language": "en"}
    refused = [
        httpx.post(f"{url}/v1/voices", headers=synth, data=form, files={"audio": ("r.wav", ref)}, timeout=30),
        httpx.put(f"{url}/v1/voices/default", headers=synth, json={"voice_id": None}, timeout=10),
        httpx.delete(f"{url}/v1/voices/default", headers=synth, timeout=10),
        httpx.delete(f"{url}/v1/voices/nope", headers=synth, timeout=10),
        httpx.delete(f"{url}/v1/jobs/nope", headers=bearer(ENV_SYNTH), timeout=10),
    ]
    for response in refused:
        assert_error(response, 403, "forbidden", contains="admin scope")
    created = httpx.post(f"{url}/v1/voices", headers=admin, data=form, files={"audio": ("r.wav", ref)}, timeout=60)
    assert created.status_code == 201, created.text
    voice_id = created.json()["id"]
    assert httpx.get(f"{url}/v1/voices/{voice_id}", headers=synth, timeout=10).status_code == 200  # reading: fine
    assert httpx.put(f"{url}/v1/voices/default", headers=admin, json={"voice_id": voice_id}, timeout=10).json() == {
        "voice_id": voice_id}
    assert httpx.delete(f"{url}/v1/voices/default", headers=bearer(ENV_ADMIN), timeout=10).status_code == 204
    assert httpx.delete(f"{url}/v1/voices/{voice_id}", headers=admin, timeout=10).status_code == 204
    assert_error(httpx.delete(f"{url}/v1/jobs/nope", headers=admin, timeout=10), 404, "job_not_found")


def test_the_keys_file_is_reloaded_when_it_changes(gateway: GatewayServer, keys: tuple[Path, dict[str, str]]) -> None:
    path, raws = keys
    before = path.read_text()
    new = write_keys(path.with_suffix(".new"), {"late": ("synthesize", {})})
    path.write_text(before + path.with_suffix(".new").read_text())
    try:
        deadline = time.monotonic() + 5
        while httpx.get(f"{gateway.url}/v1/models", headers=bearer(new["late"]), timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the new key was not picked up"
            time.sleep(0.1)
        # a broken edit keeps the keys in force (nobody is locked out, nobody is let in)
        path.write_text(before + "late sha256:not-hex\n")
        time.sleep(1.2)
        assert httpx.get(f"{gateway.url}/v1/models", headers=bearer(raws["synth"]), timeout=10).status_code == 200
        assert httpx.get(f"{gateway.url}/v1/models", headers=bearer(new["late"]), timeout=10).status_code == 200
    finally:
        path.write_text(before)  # revoked: gone within a second
    deadline = time.monotonic() + 5
    while httpx.get(f"{gateway.url}/v1/models", headers=bearer(new["late"]), timeout=10).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)


def test_open_mode_runs_only_on_loopback_unless_allowed(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "192.168.1.20", "gateway.example", "::"):
        with pytest.raises(AuthConfigError, match="refusing to start.*GATEWAY_ALLOW_OPEN"):
            create_app(fast_settings(tmp_path, ["http://127.0.0.1:9"], host=host))
    for host in ("127.0.0.1", "127.5.0.1", "::1", "localhost"):
        create_app(fast_settings(tmp_path, ["http://127.0.0.1:9"], host=host))
    create_app(fast_settings(tmp_path, ["http://127.0.0.1:9"], host="0.0.0.0", allow_open=True))
    create_app(fast_settings(tmp_path, ["http://127.0.0.1:9"], host="0.0.0.0", api_keys="k"))
    create_app(fast_settings(tmp_path, ["http://127.0.0.1:9"], host="0.0.0.0", api_keys_file=tmp_path / "none"))


def test_open_mode_on_loopback_lets_everyone_do_everything(tmp_path: Path) -> None:
    with running_gateway(fast_settings(tmp_path / "shared", ["http://127.0.0.1:9"])) as gw:

        @gw.app.get("/_test/whoami")
        async def whoami(request: Request) -> dict[str, object]:
            return {"key_id": request.state.key_id, "admin": is_admin(request)}

        assert httpx.get(f"{gw.url}/_test/whoami", timeout=10).json() == {"key_id": None, "admin": True}
        assert httpx.delete(f"{gw.url}/v1/voices/default", timeout=10).status_code == 204
        response = httpx.get(f"{gw.url}/v1/models", timeout=10)
        assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers


def test_metrics_can_be_made_to_need_a_key(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "shared", ["http://127.0.0.1:9"], api_keys="scraper-key:synthesize",
                             metrics_require_key=True)
    with running_gateway(settings) as gw:
        assert_error(httpx.get(f"{gw.url}/metrics", timeout=10), 401, "unauthorized")
        scraped = httpx.get(f"{gw.url}/metrics", headers=bearer("scraper-key"), timeout=10)
        assert scraped.status_code == 200 and "gateway_requests_total" in scraped.text
        assert httpx.get(f"{gw.url}/healthz", timeout=10).status_code == 200


def test_engine_urls_in_readyz_need_an_admin_key(gateway: GatewayServer, engine_v2: EngineProcess) -> None:
    host = engine_v2.url.removeprefix("http://")
    for headers in ({}, bearer(ENV_SYNTH)):
        plain = httpx.get(f"{gateway.url}/readyz?verbose=1", headers=headers, timeout=10)
        assert host not in plain.text and plain.json()["engines"][0]["id"] == "e0"
    verbose = httpx.get(f"{gateway.url}/readyz?verbose=1", headers=bearer(ENV_ADMIN), timeout=10)
    assert host in verbose.text and str(gateway.settings.shared_dir) in verbose.text
