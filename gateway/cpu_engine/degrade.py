"""The audio faults (faults.py `AUDIO_FAULTS`): a well-formed answer whose audio is wrong the ways GPT-SoVITS's
sampling goes wrong — empty, cut short, endless, or another speaker's voice."""

from __future__ import annotations

import numpy as np

from gateway.cpu_engine import adapt

#: `short` keeps this share of the speech (from its first sound on: a cut in the leading pause would hide it).
SHORT_SHARE = 0.2
#: `endless` says the text this many times (a runaway decoder goes on for up to a minute).
ENDLESS_REPEATS = 6
#: `wrong_voice` moves the median pitch by this factor (down instead when the voice is already high).
WRONG_VOICE_RATIO = 2.2
_HIGH_VOICE_HZ = 180.0


def degrade(fault: str | None, audio: np.ndarray, rate: int) -> np.ndarray:
    """`audio` as the fault makes it; unchanged for no fault or a protocol fault."""
    if fault == "mute":
        return np.zeros_like(audio)
    if fault == "short":
        loud = np.flatnonzero(np.abs(audio) > 1e-3)
        if loud.size == 0:
            return audio[:1]
        return audio[: loud[0] + max(1, int((loud[-1] - loud[0]) * SHORT_SHARE))]
    if fault == "endless":
        return np.tile(audio, ENDLESS_REPEATS)
    if fault == "wrong_voice":
        return _other_voice(audio, rate)
    return audio


def _other_voice(audio: np.ndarray, rate: int) -> np.ndarray:
    """Pitch (and, with it, formants) far from the voice the engine was asked for: the engine's own adaptation
    (adapt.py), aimed at the wrong target."""
    source = adapt.pitch_stats(audio, rate, adapt.SOURCE_F0_CEIL_HZ)
    if source is None:
        return audio
    ratio = WRONG_VOICE_RATIO if source.median_hz < _HIGH_VOICE_HZ else 1 / WRONG_VOICE_RATIO
    shifted, _ = adapt.adapt(audio, rate, adapt.PitchStats(source.median_hz * ratio, source.log_spread))
    return shifted
