"""The CPU engine over HTTP: `POST /tts` with a 5 s reference gives 32 kHz speech whose pitch follows it."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import pyworld

from tests.support import EngineProcess, assert_speech, decode_wav, make_reference

TEXT = "The gateway speaks with the voice of whoever recorded the reference, high or low."


def median_f0(samples: np.ndarray, rate: int) -> float:
    """Median F0 of the voiced frames, measured independently of the engine (WORLD Harvest)."""
    f0, _ = pyworld.harvest(samples.astype(np.float64), rate, f0_floor=50.0, f0_ceil=500.0)
    return float(np.median(f0[f0 > 0]))


@pytest.mark.parametrize("reference_f0", [100.0, 220.0])
def test_output_pitch_follows_the_reference(engine_v2: EngineProcess, tmp_path: Path, reference_f0: float) -> None:
    ref = make_reference(tmp_path / f"ref-{reference_f0:.0f}.wav", seconds=5.0, f0=reference_f0)
    body = {"text": TEXT, "text_lang": "en", "ref_audio_path": str(ref), "prompt_text": "", "prompt_lang": "en"}
    response = httpx.post(f"{engine_v2.url}/tts", json=body, timeout=120)
    assert response.status_code == 200, response.text
    samples, rate = decode_wav(response.content)
    assert_speech(samples, rate, expected_rate=32000, min_seconds=2.0, max_seconds=12.0)
    measured = median_f0(samples, rate)
    assert measured == pytest.approx(reference_f0, rel=0.10), f"output median F0 {measured:.1f} Hz"
