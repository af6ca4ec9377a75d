"""The audio faults (faults.py `AUDIO_FAULTS`): a well-formed answer whose audio is wrong the ways GPT-SoVITS's
sampling goes wrong — empty, cut short, endless, or another speaker's voice."""

from __future__ import annotations

import numpy as np
import pyworld
import soxr

from gateway.cpu_engine import adapt

#: `short` keeps this share of the speech (from its first sound on: a cut in the leading pause would hide it).
SHORT_SHARE = 0.2
#: `endless` says the text this many times (a runaway decoder goes on for up to a minute).
ENDLESS_REPEATS = 6
#: `wrong_voice` moves the median pitch by this factor (down instead when the voice is already high).
WRONG_VOICE_RATIO = 2.2
_HIGH_VOICE_HZ = 180.0
_WORK_RATE = 16000


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
    """Pitch (and, with it, formants) far from the voice the engine was asked for. WORLD at 16 kHz with DIO:
    a fault needs no fidelity, and the engine's Harvest at the output rate costs seconds per clip."""
    low = soxr.resample(audio, rate, _WORK_RATE).astype(np.float64)
    f0, times = pyworld.dio(low, _WORK_RATE, f0_floor=adapt.F0_FLOOR_HZ, f0_ceil=adapt.SOURCE_F0_CEIL_HZ)
    f0 = pyworld.stonemask(low, f0, times, _WORK_RATE)
    voiced = f0[f0 > 0]
    if voiced.size < adapt.MIN_VOICED_FRAMES:
        return audio
    ratio = WRONG_VOICE_RATIO if float(np.median(voiced)) < _HIGH_VOICE_HZ else 1 / WRONG_VOICE_RATIO
    warp = float(np.clip(ratio**adapt.FORMANT_EXPONENT, *adapt.FORMANT_WARP_RANGE))
    envelope = adapt.warp_envelope(pyworld.cheaptrick(low, f0, times, _WORK_RATE), warp)
    aperiodicity = adapt.warp_envelope(pyworld.d4c(low, f0, times, _WORK_RATE), warp)
    shifted = pyworld.synthesize(f0 * ratio, envelope, aperiodicity, _WORK_RATE)
    out = np.zeros(audio.size, dtype=np.float32)
    back = soxr.resample(shifted, _WORK_RATE, rate)[: audio.size]
    out[: back.size] = back
    return out
