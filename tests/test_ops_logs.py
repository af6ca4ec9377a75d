"""Operators' view: one JSON access line per request (GATEWAY_LOG_FORMAT=json), the client's request id on the
engine call, and CORS (off unless GATEWAY_CORS_ORIGINS allows origins)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.gateway_support import fast_settings, gateway_process, running_gateway
from tests.job_support import create_voice
from tests.support import EngineProcess, engine_stats, free_port, running_engine


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with running_engine("--debug-routes", "--instant", flavor="v2") as process:
        yield process


def _serve_and_log(tmp_path: Path, engine: EngineProcess, log_format: str, work: Any) -> list[str]:
    """Run the gateway as `sovits-gateway serve` with `log_format`, do `work(url)`, stop it: its log lines."""
    log_file = tmp_path / f"gateway-{log_format}.log"
    env = {"GATEWAY_ENGINES": engine.url, "GATEWAY_SHARED_DIR": str(tmp_path / "shared"),
           "GATEWAY_LOG_FORMAT": log_format}
    with gateway_process(env, log_level="info", output=log_file) as gw:
        work(gw.url)
    return [line for line in log_file.read_text().splitlines() if line.strip()]


def test_json_logs_one_access_line_per_request_with_its_facts(tmp_path: Path, engine: EngineProcess) -> None:
    """Break: uvicorn's access log left on in json mode → a second, non-JSON line per request; facts not noted
    by the route (`facts.note_rendered` removed) → engine/attempts/times are null; X-Request-ID not sent by
    the engine client → the engine never sees it."""
    made: dict[str, Any] = {}

    def work(url: str) -> None:
        made["voice"] = create_voice(url, tmp_path)
        clone = httpx.post(f"{url}/v1/voice-clone", headers={"X-Request-ID": "ops-clone-1"}, timeout=60,
                           data={"voice_id": made["voice"], "text": "Hello there.", "text_language": "en"})
        assert clone.status_code == 200, clone.text
        body = {"voice": made["voice"], "input": "Hello there.", "text_language": "en", "response_format": "mp3"}
        streamed = httpx.post(f"{url}/v1/audio/speech", headers={"X-Request-ID": "ops-stream-1"}, json=body,
                              timeout=60)
        assert streamed.status_code == 200 and len(streamed.content) > 1000
        missing = httpx.get(f"{url}/v1/jobs/nope", headers={"X-Request-ID": "ops-missing-1"}, timeout=10)
        assert missing.status_code == 404

    lines = _serve_and_log(tmp_path, engine, "json", work)
    records = [json.loads(line) for line in lines]  # every line is one JSON object, uvicorn's too
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert not [r for r in records if r["logger"] == "uvicorn.access"], "two access lines per request"
    access = {r["request_id"]: r for r in records if r["logger"] == "gateway.access"}
    assert len([r for r in records if r["logger"] == "gateway.access"]) == len(access)  # one line per request

    clone = access["ops-clone-1"]
    assert clone["method"] == "POST" and clone["route"] == "/v1/voice-clone" and clone["status"] == 200
    assert clone["key_id"] is None and clone["voice_id"] == made["voice"]
    assert clone["engine"] == "e0" and clone["attempts"] == 1 and clone["cache"] == "bypass"
    assert clone["queue_seconds"] >= 0 and clone["engine_seconds"] > 0 and clone["encode_seconds"] >= 0
    assert clone["audio_seconds"] == pytest.approx(5.0, abs=0.05)  # the --instant engine's canned 5 s clip
    assert 0 < clone["engine_seconds"] <= clone["duration"]

    stream = access["ops-stream-1"]
    assert stream["route"] == "/v1/audio/speech" and stream["status"] == 200 and stream["engine"] == "e0"
    assert stream["voice_id"] == made["voice"] and stream["attempts"] == 1 and stream["queue_seconds"] >= 0
    assert stream["audio_seconds"] == pytest.approx(5.0, abs=0.05) and stream["engine_seconds"] > 0

    missing = access["ops-missing-1"]
    assert missing["route"] == "/v1/jobs/{job_id}" and missing["status"] == 404  # the template, not the path
    assert missing["engine"] is None and missing["voice_id"] is None

    # the request id went on to the engine with the synthesis
    seen = engine_stats(engine.url)["request_ids"]
    assert ["/tts", "ops-clone-1"] in seen and ["/tts", "ops-stream-1"] in seen
    assert "ops-missing-1" not in json.dumps(seen)


def test_text_logs_stay_as_they_were(tmp_path: Path, engine: EngineProcess) -> None:
    """The default: human lines, uvicorn's access line once per request, no JSON."""

    def work(url: str) -> None:
        assert httpx.get(f"{url}/v1/models", headers={"X-Request-ID": "ops-text-1"}).status_code == 200

    lines = _serve_and_log(tmp_path, engine, "text", work)
    assert [line for line in lines if "GET /v1/models" in line and " 200" in line], lines
    assert len([line for line in lines if "/v1/models" in line]) == 1
    assert not [line for line in lines if line.startswith("{")]


def test_cors_is_off_unless_origins_are_allowed(tmp_path: Path) -> None:
    """Break: CORSMiddleware added unconditionally (allow_origins=["*"]) → the default gateway answers
    preflights and sets Access-Control-Allow-Origin."""
    nowhere = [f"http://127.0.0.1:{free_port()}"]  # CORS is answered before any engine is needed
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    assert Settings(_env_file=None, cors_origins="https://a.example, https://b.example").cors_origins == [  # type: ignore[call-arg]
        "https://a.example", "https://b.example"]

    with running_gateway(fast_settings(tmp_path / "off", nowhere)) as gw:
        answer = httpx.options(f"{gw.url}/v1/audio/speech", headers=preflight)
        assert answer.status_code == 405 and "access-control-allow-origin" not in answer.headers
        plain = httpx.get(f"{gw.url}/healthz", headers={"Origin": "https://app.example"})
        assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers

    with running_gateway(fast_settings(tmp_path / "on", nowhere, cors_origins=["https://app.example"])) as gw:
        answer = httpx.options(f"{gw.url}/v1/audio/speech", headers=preflight)
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in answer.headers["access-control-allow-methods"]
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        plain = httpx.get(f"{gw.url}/healthz", headers={"Origin": "https://app.example"})
        assert plain.headers["access-control-allow-origin"] == "https://app.example"
        exposed = plain.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "x-audio-duration" in exposed
        other = httpx.options(f"{gw.url}/v1/audio/speech", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers

    with running_gateway(fast_settings(tmp_path / "any", nowhere, cors_origins=["*"])) as gw:
        plain = httpx.get(f"{gw.url}/healthz", headers={"Origin": "https://anywhere.example"})
        assert plain.headers["access-control-allow-origin"] == "*"
