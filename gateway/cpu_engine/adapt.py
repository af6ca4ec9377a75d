"""Pitch and formant adaptation of synthesized speech towards a reference voice, with WORLD (pyworld).

The CPU engine has one English voice and a few espeak voices, all male and low (median F0 roughly
90-150 Hz). To make the reference audibly matter, as it does for GPT-SoVITS, each synthesized segment
is re-rendered with its median F0 moved to the reference's median F0, and its spectral envelope
stretched along frequency by a milder factor so the formants follow (a higher voice usually has a
shorter vocal tract) without turning into a chipmunk.

Pitch is converted in the log domain: median to median (the pitch ratio) and, when the reference is
flatter than our voice, the intonation range narrowed towards it (at most halved). Piper's voice
swings over more than an octave within a sentence; scaling that by 0.6 for a deep reference would
push its low syllables under 55 Hz, where they turn into creak and no longer read as the target pitch.

F0 comes from Harvest rather than DIO: on these voices DIO reports the octave above in a third of the
frames (checked against the autocorrelation), which would bias the median and make WORLD resynthesise
octave jumps. Harvest also calls some fricatives voiced, so D4C's voiced/unvoiced decision (which
WORLD makes anyway for the aperiodicity) trims those frames. Harvest costs about 0.13 s per second of
audio, D4C and CheapTrick about 0.02 s, synthesis about 0.015 s, at the 22.05 kHz the voices produce;
adaptation therefore runs before resampling to the output rate.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyworld
import soundfile
import soxr

_LOGGER = logging.getLogger(__name__)

FRAME_PERIOD_MS = 5.0
F0_FLOOR_HZ = 60.0
#: References can be any voice, children included.
REFERENCE_F0_CEIL_HZ = 700.0
#: Our own voices stay below this; a tighter range makes Harvest faster and less error-prone.
SOURCE_F0_CEIL_HZ = 400.0
#: References are analysed at 16 kHz: plenty for F0 and cheaper than their native rate.
REFERENCE_ANALYSIS_RATE = 16000
#: Below this |ratio - 1| the pitch change is inaudible next to the voice's own variation, so the
#: costly (and slightly lossy) WORLD round trip is skipped.
SKIP_TOLERANCE = 0.04
FORMANT_EXPONENT = 0.5
FORMANT_WARP_RANGE = (0.8, 1.25)
PITCH_RATIO_RANGE = (0.25, 4.0)
#: The intonation range is only ever narrowed, and to no less than a quarter, so speech never goes flat.
SPREAD_SCALE_RANGE = (0.25, 1.0)
#: Fewer voiced frames than this (100 ms) gives no trustworthy median.
MIN_VOICED_FRAMES = 20
#: D4C marks a frame unvoiced by setting its aperiodicity to (almost) 1 in every band.
_D4C_UNVOICED = 0.999
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


@dataclass(frozen=True)
class _Analysis:
    samples: np.ndarray  # float64, as WORLD wants
    f0: np.ndarray  # Hz per frame, 0 where unvoiced (Harvest trimmed by D4C)
    times: np.ndarray
    aperiodicity: np.ndarray


def _analyse(audio: np.ndarray, rate: int, f0_ceil: float) -> _Analysis:
    samples = np.ascontiguousarray(audio, dtype=np.float64)
    f0, times = pyworld.harvest(samples, rate, f0_floor=F0_FLOOR_HZ, f0_ceil=f0_ceil, frame_period=FRAME_PERIOD_MS)
    aperiodicity = pyworld.d4c(samples, f0, times, rate)
    f0 = np.where(aperiodicity[:, 0] < _D4C_UNVOICED, f0, 0.0)
    return _Analysis(samples, f0, times, aperiodicity)


def _stats(f0: np.ndarray) -> PitchStats | None:
    voiced = f0[f0 > 0]
    if voiced.size < MIN_VOICED_FRAMES:
        return None
    log_f0 = np.log(voiced)
    q25, q50, q75 = np.percentile(log_f0, [25, 50, 75])
    return PitchStats(float(np.exp(q50)), float((q75 - q25) / _IQR_TO_SIGMA))


def pitch_stats(audio: np.ndarray, rate: int, f0_ceil: float = REFERENCE_F0_CEIL_HZ) -> PitchStats | None:
    """Pitch statistics of mono `audio`, or None if less than 100 ms of it is voiced."""
    if audio.size == 0:
        return None
    return _stats(_analyse(audio, rate, f0_ceil).f0)


def median_f0(audio: np.ndarray, rate: int, f0_ceil: float = REFERENCE_F0_CEIL_HZ) -> float | None:
    """Median F0 (Hz) over the voiced frames of mono `audio`, or None if too little is voiced."""
    stats = pitch_stats(audio, rate, f0_ceil)
    return stats.median_hz if stats else None


@lru_cache(maxsize=64)
def _reference_stats_cached(path: str, _mtime_ns: int, _size: int) -> PitchStats | None:
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != REFERENCE_ANALYSIS_RATE:
        mono = soxr.resample(mono, rate, REFERENCE_ANALYSIS_RATE)
    return pitch_stats(mono, REFERENCE_ANALYSIS_RATE)


def reference_pitch(path: str) -> PitchStats | None:
    """Pitch statistics of a reference file (any rate, channel count or format soundfile reads).

    Cached per (path, mtime, size): the same reference is normally reused for many requests, and
    analysing a 10 s clip costs around a second. Unreadable or unvoiced references give None.
    """
    try:
        stat = os.stat(path)
        return _reference_stats_cached(path, stat.st_mtime_ns, stat.st_size)
    except (OSError, soundfile.LibsndfileError, ValueError) as error:
        _LOGGER.warning("cannot analyse reference %s: %s", path, error)
        return None


def warp_envelope(envelope: np.ndarray, factor: float) -> np.ndarray:
    """Stretch each frame of a (frames, bins) spectral envelope along frequency by `factor`.

    A factor above 1 moves spectral peaks (formants) up: output bin k takes the value at bin k/factor.
    Bins that would read past the top repeat the last one, which holds almost no energy.
    """
    bins = envelope.shape[1]
    source = np.arange(bins, dtype=np.float64) / factor
    lower = np.minimum(np.floor(source).astype(np.int64), bins - 1)
    upper = np.minimum(lower + 1, bins - 1)
    fraction = np.clip(source - lower, 0.0, 1.0)
    warped = envelope[:, lower] * (1.0 - fraction) + envelope[:, upper] * fraction
    return np.ascontiguousarray(warped)


def _convert_f0(f0: np.ndarray, decision: AdaptationPlan) -> np.ndarray:
    """Log-domain conversion: source median -> target median, deviations scaled by spread_scale."""
    assert decision.source_f0 is not None and decision.target_f0 is not None
    voiced = f0 > 0
    converted = np.zeros_like(f0)
    deviation = np.log(f0[voiced]) - np.log(decision.source_f0)
    centre = np.log(decision.source_f0 * decision.ratio)
    converted[voiced] = np.exp(centre + decision.spread_scale * deviation)
    return converted


def adapt(audio: np.ndarray, rate: int, target: PitchStats | None) -> tuple[np.ndarray, AdaptationPlan]:
    """Move `audio`'s pitch to `target` (median, and range if flatter) and its formants part of the way.

    Returns the input untouched (and a plan with skip=True) when the target is unknown, the audio is
    unvoiced, or the median pitch already matches within SKIP_TOLERANCE.
    """
    if target is None or audio.size == 0:
        return audio, plan(None, target)
    analysis = _analyse(audio, rate, SOURCE_F0_CEIL_HZ)
    decision = plan(_stats(analysis.f0), target)
    if decision.skip:
        return audio, decision
    envelope = pyworld.cheaptrick(analysis.samples, analysis.f0, analysis.times, rate)
    aperiodicity = analysis.aperiodicity
    if decision.formant_warp != 1.0:
        envelope = warp_envelope(envelope, decision.formant_warp)
        aperiodicity = warp_envelope(aperiodicity, decision.formant_warp)
    f0 = _convert_f0(analysis.f0, decision)
    rendered = pyworld.synthesize(f0, envelope, aperiodicity, rate, FRAME_PERIOD_MS)
    # WORLD rounds the length to whole frames; keep the caller's sample count.
    fitted = np.zeros(audio.size, dtype=np.float32)
    length = min(audio.size, rendered.size)
    fitted[:length] = rendered[:length]
    return fitted, decision
