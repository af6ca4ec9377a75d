"""Real-speech references for the pitch tests and bench/cpu_engine_pitch.py, made in-process by espeak-ng.

espeak-ng (the library `espeakng-loader` ships, through gateway/cpu_engine/espeak.py) speaks English
or Mandarin with a male or female variant; its base-pitch parameter puts the median F0 where we want
it. The pitch values below were calibrated once against `measured_median_f0` (each lands within about
1 % of its nominal F0), so the tests need nothing outside the project install: no espeak-ng binary, no sox.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import soundfile
import soxr

from gateway.cpu_engine import espeak

REFERENCE_RATE = 32000  #: written at a typical GPT-SoVITS reference rate, so the engine resamples as in use
ENGLISH_PROMPT = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."
CHINESE_PROMPT = "今天早上我们一起去公园散步，看到很多人在湖边跑步和打太极拳。"


@dataclass(frozen=True)
class VoiceReference:
    """An espeak-ng voice at a base pitch, with the median F0 (Hz) it gives on its language's prompt."""

    nominal_hz: int
    voice: str  # espeak-ng voice name with variant: +f* female; none or +m* male
    pitch: int  # espeak-ng base pitch, 0-100 (default 50)
    lang: str  # "en" or "zh": the prompt it speaks

    @property
    def name(self) -> str:
        gender = "female" if "+f" in self.voice else "male"
        return f"{self.lang}-{gender}-{self.nominal_hz}"


REFERENCES: tuple[VoiceReference, ...] = (
    VoiceReference(90, "en-us", 39, "en"),
    VoiceReference(120, "en-us", 68, "en"),
    VoiceReference(160, "en-us+f4", 40, "en"),
    VoiceReference(207, "en-us+f3", 50, "en"),  # what `espeak-ng -v en-us+f3` says, at its default pitch
    VoiceReference(260, "en-us+f3", 75, "en"),
    VoiceReference(90, "cmn", 50, "zh"),
    VoiceReference(120, "cmn", 76, "zh"),
    VoiceReference(160, "cmn+f4", 50, "zh"),
    VoiceReference(207, "cmn+f5", 60, "zh"),
    VoiceReference(260, "cmn+f5", 79, "zh"),
)


def write_voice_reference(folder: Path, reference: VoiceReference) -> Path:
    """Speak the reference's prompt and write it as a 32 kHz 16-bit WAV named after it."""
    prompt = ENGLISH_PROMPT if reference.lang == "en" else CHINESE_PROMPT
    audio = espeak.synthesize(prompt, reference.voice, espeak.DEFAULT_RATE_WPM, reference.pitch)
    audio = soxr.resample(audio, espeak.sample_rate(), REFERENCE_RATE)
    path = folder / f"{reference.name}.wav"
    soundfile.write(str(path), audio, REFERENCE_RATE, subtype="PCM_16")
    return path
