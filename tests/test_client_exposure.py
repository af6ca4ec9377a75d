"""What clients see: no engine URL or host:port in any client-facing body or header, in every kind of answer
(successes, each engine fault, a mid-stream abort, a hung engine, a stopped engine, jobs, readiness).
Engines are named by id (`e0`); operators find URLs in logs, metrics and `/readyz?verbose=1`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cpu_engine.faults import AUDIO_FAULTS, FAULTS
from tests.gateway_support import fast_settings, running_gateway
from tests.job_support import create_voice, lines, submit, wait_for_job
from tests.support import EngineProcess, running_engine, set_engine_faults, wait_until

_TEXT_TYPES = ("application/json", "text/", "application/problem+json")


@dataclass
class Seen:
    """Every answer a client got, as (what was asked, status, headers, body text or None for audio)."""

    answers: list[tuple[str, int, dict[str, str], str | None]] = field(default_factory=list)

    def fetch(self, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], str | None]:
        """One request; a body the server cuts off (a stream aborted mid-way) is kept as far as it came."""
        kwargs.setdefault("timeout", 60)
        received = bytearray()
        with httpx.stream(method, url, **kwargs) as response:
            try:
                for chunk in response.iter_bytes():
                    received.extend(chunk)
            except httpx.RemoteProtocolError:
                pass
        kind = response.headers.get("content-type", "")
        text = received.decode("utf-8", "replace") if kind.startswith(_TEXT_TYPES) else None
        headers = dict(response.headers)
        self.answers.append((f"{method} {url}", response.status_code, headers, text))
        return response.status_code, headers, text

    def leaks(self, needles: list[str]) -> list[str]:
        found = []
        for asked, status, headers, text in self.answers:
            for needle in needles:
                where = [f"header {k}" for k, v in headers.items() if needle in v]
                if text is not None and needle in text:
                    where.append("body")
                found += [f"{asked} → {status}: {needle!r} in {place}" for place in where]
        return found


@pytest.fixture()
def engine() -> Iterator[EngineProcess]:
    with running_engine("--debug-routes", "--instant", flavor="v2") as process:
        yield process


def test_no_engine_url_reaches_a_client(tmp_path: Path, engine: EngineProcess) -> None:
    """Break: X-Engine (or the voice-clone `engine`, a segment's `engine`, an error's message) back to the URL
    → this lists each leak."""
    needles = [f"127.0.0.1:{engine.port}", f"localhost:{engine.port}"]
    seen = Seen()
    settings = fast_settings(tmp_path / "shared", [engine.url], read_timeout=3.0, read_timeout_per_char=0.0,
                             cooldown_seconds=1.0, cooldown_max_seconds=1.0, max_attempts=1,
                             cooldown_after_failures=100)  # each fault reaches the engine, not a cooling pool
    with running_gateway(settings) as gw:
        api = gw.url
        voice = create_voice(api, tmp_path)
        clone = {"voice_id": voice, "text": "Hello there.", "text_language": "en"}
        speech = {"voice": voice, "input": "Hello there.", "text_language": "en", "response_format": "wav"}
        # successes, whole and streamed
        assert seen.fetch("POST", f"{api}/v1/voice-clone", data=clone)[0] == 200
        assert seen.fetch("POST", f"{api}/v1/voice-clone", data={**clone, "stream": "true"})[0] == 200
        for stream in (False, True):
            status, headers, _ = seen.fetch("POST", f"{api}/v1/audio/speech", json={**speech, "stream": stream})
            assert status == 200 and headers["x-engine"] == "e0"
        job_id = submit(api, {"voice": voice, "segments": lines(2)}).json()["id"]
        done = wait_for_job(api, job_id, timeout=120)
        assert {segment["engine"] for segment in done["segments"]} == {"e0"}
        for path in (f"/v1/jobs/{job_id}", "/v1/jobs", "/readyz", "/healthz", "/v1/voices", "/v1/models"):
            seen.fetch("GET", f"{api}{path}")
        # each engine fault, on a whole answer and on a stream (truncate: an abort mid-stream)
        for fault in FAULTS:
            if fault == "hang":
                continue
            set_engine_faults(engine.url, fault=fault)
            # an audio fault is a well-formed answer: 200 with `quality` saying what is wrong
            expected = 200 if fault in AUDIO_FAULTS else 502
            assert seen.fetch("POST", f"{api}/v1/voice-clone", data=clone)[0] == expected, fault
            assert seen.fetch("POST", f"{api}/v1/audio/speech", json={**speech, "stream": True})[0] in (200, 502)
            set_engine_faults(engine.url, fault=None)
        # a hung engine (504), then the pool with no engine up (503 naming each engine and its last error)
        set_engine_faults(engine.url, fault="hang")
        assert seen.fetch("POST", f"{api}/v1/voice-clone", data=clone)[0] == 504
        set_engine_faults(engine.url, fault=None)
        assert seen.fetch("POST", f"{api}/v1/voice-clone", data=clone)[0] in (200, 503)
        seen.fetch("GET", f"{api}/readyz")
        wait_until(lambda: httpx.get(f"{api}/readyz").status_code == 200)
        # the engine stopped: refused (503 naming e0), then no engine up
        engine.stop()
        for _ in range(2):
            status, _, text = seen.fetch("POST", f"{api}/v1/voice-clone", data=clone)
            assert status == 503 and text is not None and "e0" in text
        seen.fetch("GET", f"{api}/readyz")
        seen.fetch("GET", f"{api}/v1/jobs/{job_id}")
        assert seen.leaks(needles) == []
        # the needles do find the URL where operators see it: an admin's verbose readiness, the metrics
        operators = Seen()
        verbose = operators.fetch("GET", f"{api}/readyz", params={"verbose": 1})[2]
        assert verbose is not None and engine.url in verbose
        operators.fetch("GET", f"{api}/metrics")
        assert len(operators.leaks(needles)) == 2
    assert len(seen.answers) >= 20
