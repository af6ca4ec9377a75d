"""`cpu-engine --instant` (the benchmarks' engine) and the engine's quiet health-probe log.

The instant engine must keep the protocol (validation, errors, media types, streaming) and only skip
synthesis: it answers with one fixed 5 s clip. Speed is measured in bench/overhead.py, not here.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.support import (
    REPO_ROOT,
    EngineProcess,
    make_reference,
    pcm16,
    running_engine,
    tts_params,
    wait_until,
    wav_stream_header,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_reference(tmp_path_factory.mktemp("refs") / "ref.wav")


@pytest.fixture(scope="module")
def instant() -> Iterator[EngineProcess]:
    with running_engine("--instant") as engine:
        yield engine


def assert_clip(audio: np.ndarray, rate: int, expected_rate: int = 32000) -> None:
    assert rate == expected_rate
    assert len(audio) / rate == pytest.approx(5.0, abs=0.001)
    assert np.sqrt(np.mean(np.square(audio))) > 0.05  # a voiced clip, not the engine's silence placeholder


@pytest.mark.parametrize("media_type", ["wav", "ogg"])
def test_instant_answers_a_decodable_5_s_clip(instant: EngineProcess, reference: Path, media_type: str) -> None:
    response = httpx.post(f"{instant.url}/tts", json=tts_params(reference, media_type=media_type), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"audio/{media_type}"
    audio, rate = sf.read(io.BytesIO(response.content))
    assert_clip(audio, rate)


def test_instant_streams_the_clip_in_the_engine_framing(instant: EngineProcess, reference: Path) -> None:
    response = httpx.post(f"{instant.url}/tts", json=tts_params(reference, streaming_mode=True), timeout=30)
    assert response.status_code == 200
    assert response.content[:44] == wav_stream_header(32000)
    assert_clip(pcm16(response.content[44:]), 32000)


def test_instant_still_validates_like_the_engine(instant: EngineProcess, reference: Path) -> None:
    missing_text = {k: v for k, v in tts_params(reference).items() if k != "text"}
    response = httpx.post(f"{instant.url}/tts", json=missing_text, timeout=30)
    assert (response.status_code, response.json()) == (400, {"message": "text is required"})
    gone = httpx.post(f"{instant.url}/tts", json=tts_params(reference.with_name("gone.wav")), timeout=30)
    assert gone.status_code == 400
    assert gone.json()["message"] == "tts failed" and "not exists" in gone.json()["Exception"]
    aac = httpx.post(f"{instant.url}/tts", json=tts_params(reference, media_type="aac"), timeout=30)
    assert aac.status_code == 400 and "ffmpeg" in aac.json()["Exception"]  # as an engine host without ffmpeg


def test_instant_api_py_flavour(reference: Path) -> None:
    with running_engine("--instant", flavor="v1") as engine:
        params = {"refer_wav_path": str(reference), "prompt_text": "A reference.", "prompt_language": "en",
                  "text": "Hello there.", "text_language": "en"}
        response = httpx.get(f"{engine.url}/", params=params, timeout=30)
        assert response.status_code == 200
        audio, rate = sf.read(io.BytesIO(response.content))
        assert_clip(audio, rate)


def test_the_command_line_takes_instant() -> None:
    """`sovits-gateway cpu-engine --instant` reaches the engine's parser (it would exit 2 on an unknown flag)."""
    done = subprocess.run([sys.executable, "-m", "gateway", "cpu-engine", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--instant" in done.stdout


def test_probes_stay_out_of_the_info_log(instant: EngineProcess, reference: Path) -> None:
    for _ in range(3):
        assert httpx.get(f"{instant.url}/openapi.json", timeout=10).status_code == 200
    assert httpx.post(f"{instant.url}/tts", json=tts_params(reference), timeout=30).status_code == 200
    wait_until(lambda: '"POST /tts HTTP/1.1" 200' in instant.log())  # access logging itself is on
    assert "/openapi.json" not in instant.log()


def test_probes_are_logged_at_debug_level() -> None:
    with running_engine("--instant", "--log-level", "debug") as engine:
        httpx.get(f"{engine.url}/openapi.json", timeout=10)
        wait_until(lambda: '"GET /openapi.json HTTP/1.1" 200' in engine.log())
