"""The CPU engine over HTTP: `POST /tts` gives 32 kHz speech whose median F0 follows the reference's within 5 %.

References are real speech from espeak-ng (tests/voice_refs.py): English and Mandarin, male and female,
about 90 to 260 Hz; the engine answers in the reference's language, so both of its voices (Piper for
English, espeak-ng for Chinese) are shifted up to 3x. Two synthetic references (tests/support) cover a
flat, vibrato-only voice. Pitch is measured by Praat's cross-correlation tracker (support.measured_median_f0),
a different algorithm from the engine's, on the reference and on the answer alike.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import soundfile

from tests.support import EngineProcess, assert_speech, decode_wav, make_reference, measured_median_f0
from tests.voice_refs import REFERENCES, VoiceReference, write_voice_reference

TEXTS = {
    "en": "The gateway speaks with the voice of whoever recorded the reference, high or low.",
    "zh": "网关用录制参考音频的人的声音说话，无论高低都应该跟随。",
}
TOLERANCE = 0.05


def spoken_median_f0(engine: EngineProcess, reference: Path, lang: str) -> float:
    body = {"text": TEXTS[lang], "text_lang": lang, "ref_audio_path": str(reference), "prompt_text": "",
            "prompt_lang": lang, "seed": 7}
    response = httpx.post(f"{engine.url}/tts", json=body, timeout=120)
    assert response.status_code == 200, response.text
    samples, rate = decode_wav(response.content)
    assert_speech(samples, rate, expected_rate=32000, min_seconds=2.0, max_seconds=12.0)
    return measured_median_f0(samples, rate)


@pytest.mark.parametrize("voice", REFERENCES, ids=lambda voice: voice.name)
def test_output_median_f0_is_within_5_percent_of_a_speech_reference(
    engine_v2: EngineProcess, tmp_path: Path, voice: VoiceReference
) -> None:
    reference = write_voice_reference(tmp_path, voice)
    audio, rate = soundfile.read(str(reference), dtype="float32")
    reference_f0 = measured_median_f0(audio, rate)
    assert reference_f0 == pytest.approx(voice.nominal_hz, rel=0.08), "the reference is not at its nominal pitch"
    measured = spoken_median_f0(engine_v2, reference, voice.lang)
    assert measured == pytest.approx(reference_f0, rel=TOLERANCE), (
        f"output median F0 {measured:.1f} Hz, reference {reference_f0:.1f} Hz ({measured / reference_f0 - 1:+.1%})"
    )


@pytest.mark.parametrize("reference_f0", [100.0, 220.0])
def test_output_median_f0_is_within_5_percent_of_a_synthetic_reference(
    engine_v2: EngineProcess, tmp_path: Path, reference_f0: float
) -> None:
    ref = make_reference(tmp_path / f"ref-{reference_f0:.0f}.wav", seconds=5.0, f0=reference_f0)
    measured = spoken_median_f0(engine_v2, ref, "en")
    assert measured == pytest.approx(reference_f0, rel=TOLERANCE), f"output median F0 {measured:.1f} Hz"
