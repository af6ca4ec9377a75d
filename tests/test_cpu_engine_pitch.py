"""The CPU engine over HTTP: `POST /tts` with a 5 s reference gives 32 kHz speech whose pitch follows it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import EngineProcess, assert_speech, decode_wav, make_reference, measured_median_f0

TEXT = "The gateway speaks with the voice of whoever recorded the reference, high or low."


@pytest.mark.parametrize("reference_f0", [100.0, 220.0])
def test_output_pitch_follows_the_reference(engine_v2: EngineProcess, tmp_path: Path, reference_f0: float) -> None:
    ref = make_reference(tmp_path / f"ref-{reference_f0:.0f}.wav", seconds=5.0, f0=reference_f0)
    body = {"text": TEXT, "text_lang": "en", "ref_audio_path": str(ref), "prompt_text": "", "prompt_lang": "en"}
    response = httpx.post(f"{engine_v2.url}/tts", json=body, timeout=120)
    assert response.status_code == 200, response.text
    samples, rate = decode_wav(response.content)
    assert_speech(samples, rate, expected_rate=32000, min_seconds=2.0, max_seconds=12.0)
    measured = measured_median_f0(samples, rate)
    assert measured == pytest.approx(reference_f0, rel=0.10), f"output median F0 {measured:.1f} Hz"
