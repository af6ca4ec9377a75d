"""Pitch and formant adaptation of synthesized speech towards a reference voice, with Praat (parselmouth).

The CPU engine has one English voice and a few espeak voices, all male and low (median F0 roughly
85-120 Hz). To make the reference audibly matter, as it does for GPT-SoVITS, each synthesized segment
gets its median F0 moved to the reference's median F0, and its formants moved up or down by a milder
factor (a higher voice usually has a shorter vocal tract) without turning into a chipmunk.

Pitch is converted in the log domain: median to median (the pitch ratio) and, when the reference is
flatter than our voice, the intonation range narrowed towards it (at most to a quarter). Piper's voice
swings over more than an octave within a sentence; scaling that by 0.6 for a deep reference would
push its low syllables under 55 Hz, where they turn into creak and no longer read as the target pitch.

F0 comes from Praat's autocorrelation tracker ("To Pitch (ac)"), whose path search keeps octave errors
out. WORLD's Harvest, used before, halved the F0 in a quarter of the frames of a high female voice
(espeak-ng en-us+f3 at 273 Hz read as 258 Hz) and read Piper's voice 35 % high (120 instead of 88 Hz);
DIO doubles it in 40 % of Piper's frames. Those errors put the target below the reference and left the
output up to 12 % low. The shift: formants moved by resampling (soxr), then Praat's "Change gender"
sets median and range by PSOLA (pitch-synchronous overlap-add) at the original duration. Praat measures
the median it shifts from with the same tracker, so the output median lands on the target. Analysis
and shift together cost about a tenth of Piper's synthesis time (WORLD: four times Piper's), see
bench/cpu_engine_pitch.py.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import parselmouth
import soundfile
import soxr
from parselmouth.praat import call

_LOGGER = logging.getLogger(__name__)

F0_FLOOR_HZ = 60.0
#: References can be any voice, children included.
REFERENCE_F0_CEIL_HZ = 700.0
#: Our own voices stay below this; a tighter range leaves the tracker fewer wrong candidates.
SOURCE_F0_CEIL_HZ = 400.0
PITCH_TIME_STEP = 0.01  # seconds between pitch frames
#: Below this |ratio - 1| the pitch change is inaudible next to the voice's own variation, so the
#: (slightly lossy) resynthesis is skipped. Kept small: a skipped segment stays off by up to this much,
#: and the promise is 5 % (it was 4 % when a WORLD round trip cost more than Piper itself).
SKIP_TOLERANCE = 0.02
FORMANT_EXPONENT = 0.5
FORMANT_WARP_RANGE = (0.8, 1.25)
PITCH_RATIO_RANGE = (0.25, 4.0)
#: The intonation range is only ever narrowed, and to no less than a quarter, so speech never goes flat.
SPREAD_SCALE_RANGE = (0.25, 1.0)
#: Fewer voiced frames than this (100 ms) gives no trustworthy median.
MIN_VOICED_FRAMES = 10
#: Praat's pitch tracker needs three periods of the floor in its window (50 ms at 60 Hz).
_MIN_ANALYSIS_SECONDS = 3.0 / F0_FLOOR_HZ
# IQR of a normal distribution in standard deviations: turns the log-F0 IQR into a robust spread.
_IQR_TO_SIGMA = 1.349


@dataclass(frozen=True)
class PitchStats:
    """Median F0 (Hz) and spread (robust standard deviation of natural-log F0) over voiced frames."""

    median_hz: float
    log_spread: float


@dataclass(frozen=True)
class AdaptationPlan:
    """What `adapt` decided for one stretch of speech (exposed so callers and tests can observe it)."""

    source_f0: float | None
    target_f0: float | None
    ratio: float
    formant_warp: float
    spread_scale: float
    skip: bool


def plan(source: PitchStats | None, target: PitchStats | None) -> AdaptationPlan:
    """Pitch ratio, intonation-range scale and formant warp that take `source` towards `target`.

    Skips when either side is unknown (unvoiced audio or reference) or the ratio of the medians is
    within SKIP_TOLERANCE of 1.
    """
    if source is None or target is None:
        source_f0 = source.median_hz if source else None
        target_f0 = target.median_hz if target else None
        return AdaptationPlan(source_f0, target_f0, 1.0, 1.0, 1.0, True)
    ratio = float(np.clip(target.median_hz / source.median_hz, *PITCH_RATIO_RANGE))
    warp = float(np.clip(ratio**FORMANT_EXPONENT, *FORMANT_WARP_RANGE))
    spread = target.log_spread / source.log_spread if source.log_spread > 0 else 1.0
    return AdaptationPlan(
        source_f0=source.median_hz,
        target_f0=target.median_hz,
        ratio=ratio,
        formant_warp=warp,
        spread_scale=float(np.clip(spread, *SPREAD_SCALE_RANGE)),
        skip=abs(ratio - 1.0) <= SKIP_TOLERANCE,
    )


def _sound(audio: np.ndarray, rate: int) -> parselmouth.Sound:
    return parselmouth.Sound(np.asarray(audio, dtype=np.float64), sampling_frequency=float(rate))


def _voiced_f0(audio: np.ndarray, rate: int, f0_ceil: float) -> np.ndarray:
    """F0 (Hz) of the frames Praat's autocorrelation tracker calls voiced (empty for too-short audio)."""
    if audio.size < _MIN_ANALYSIS_SECONDS * rate:
        return np.zeros(0)
    pitch = _sound(audio, rate).to_pitch_ac(
        time_step=PITCH_TIME_STEP, pitch_floor=F0_FLOOR_HZ, pitch_ceiling=f0_ceil
    )
    f0 = np.asarray(pitch.selected_array["frequency"], dtype=np.float64)
    return f0[f0 > 0]


def _stats(voiced: np.ndarray) -> PitchStats | None:
    if voiced.size < MIN_VOICED_FRAMES:
        return None
    log_f0 = np.log(voiced)
    q25, q50, q75 = np.percentile(log_f0, [25, 50, 75])
    return PitchStats(float(np.exp(q50)), float((q75 - q25) / _IQR_TO_SIGMA))


def pitch_stats(audio: np.ndarray, rate: int, f0_ceil: float = REFERENCE_F0_CEIL_HZ) -> PitchStats | None:
    """Pitch statistics of mono `audio`, or None if less than 100 ms of it is voiced."""
    return _stats(_voiced_f0(audio, rate, f0_ceil))


def median_f0(audio: np.ndarray, rate: int, f0_ceil: float = REFERENCE_F0_CEIL_HZ) -> float | None:
    """Median F0 (Hz) over the voiced frames of mono `audio`, or None if too little is voiced."""
    stats = pitch_stats(audio, rate, f0_ceil)
    return stats.median_hz if stats else None


@lru_cache(maxsize=64)
def _reference_stats_cached(path: str, _mtime_ns: int, _size: int) -> PitchStats | None:
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return pitch_stats(audio.mean(axis=1), int(rate))


def reference_pitch(path: str) -> PitchStats | None:
    """Pitch statistics of a reference file (any rate, channel count or format soundfile reads).

    Cached per (path, mtime, size): the same reference is normally reused for many requests, and
    reading and analysing a 10 s clip costs tens of milliseconds. Unreadable or unvoiced references
    give None.
    """
    try:
        stat = os.stat(path)
        return _reference_stats_cached(path, stat.st_mtime_ns, stat.st_size)
    except (OSError, soundfile.LibsndfileError, ValueError) as error:
        _LOGGER.warning("cannot analyse reference %s: %s", path, error)
        return None


def seed(value: int) -> None:
    """Make the shifts that follow reproducible: PSOLA fills unvoiced stretches with randomly placed periods
    (Praat's own generator, seeded from the clock at start-up), so without this a seeded request's waveform
    differed on every call (sample peaks up to 0.7 apart) and its edge silence by a 20 ms frame."""
    parselmouth.praat.run(f"random_initializeWithSeedUnsafelyButPredictably ({value % 2**31})")


def _change_gender(audio: np.ndarray, rate: int, decision: AdaptationPlan) -> np.ndarray:
    """Formants times formant_warp, median F0 to target_f0, log-F0 range times spread_scale, same duration.

    Playing the audio formant_warp times faster (soxr) moves formants and pitch up by that factor; Praat's
    "Change gender" then sets the pitch by PSOLA and stretches the duration back. Praat can shift the
    formants itself, but resamples with a sinc that costs as much as the rest of the shift together.
    """
    warp = decision.formant_warp
    faster = soxr.resample(audio, rate * warp, rate) if warp != 1.0 else audio
    shifted = call(
        _sound(faster, rate),
        "Change gender",
        F0_FLOOR_HZ,
        SOURCE_F0_CEIL_HZ * warp,  # the sped-up voice
        1.0,  # formant shift ratio: done above
        decision.target_f0,
        decision.spread_scale,
        warp,  # duration factor: back to the original length
    )
    return np.asarray(shifted.values[0], dtype=np.float32)


def adapt(audio: np.ndarray, rate: int, target: PitchStats | None) -> tuple[np.ndarray, AdaptationPlan]:
    """Move `audio`'s pitch to `target` (median, and range if flatter) and its formants part of the way.

    Returns the input untouched (and a plan with skip=True) when the target is unknown, the audio is
    unvoiced, or the median pitch already matches within SKIP_TOLERANCE.
    """
    if target is None or audio.size == 0:
        return audio, plan(None, target)
    decision = plan(pitch_stats(audio, rate, SOURCE_F0_CEIL_HZ), target)
    if decision.skip:
        return audio, decision
    rendered = _change_gender(audio, rate, decision)
    # Speeding up and stretching back can be a few samples off; keep the caller's sample count.
    fitted = np.zeros(audio.size, dtype=np.float32)
    length = min(audio.size, rendered.size)
    fitted[:length] = rendered[:length]
    return fitted, decision
