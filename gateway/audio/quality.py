"""Cheap checks of a rendered clip: what GPT-SoVITS's random sampling now and then gets wrong.

A clip that is (nearly) silent, clipped, or far too short or too long for its text is suspect: an empty
answer, a decoder that stopped early, or one that ran on. Pure functions over decoded samples, a few ms for a
minute of audio; the render service runs them on every whole clip (services/quality.py).

Speaking rate uses the speaking-rate module's unit (speakable characters: letters and digits, one per CJK
character) and its per-language priors, against a fixed yardstick on purpose: the learned rates follow what
the engines produced, faulty renders included, and a check must not drift with what it checks. The bounds are
wide (real voices differ about 2× in pace): only gross misses are flagged, and a constant slack keeps very
short texts (one word and a pause) from counting as too long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.services.speaking_rate import PRIORS, speakable_units

#: Analysis frame for the silence ratio: 20 ms, the usual speech frame.
FRAME_SECONDS = 0.02
#: A frame whose RMS is below this (-50 dBFS) is silent: well above any engine's noise floor, well below speech.
SILENCE_RMS = 10 ** (-50 / 20)
#: A sample at or above this magnitude counts as clipped (the int16 ceiling, give or take the last bit).
CLIP_LEVEL = 32766 / 32768
#: Seconds of speech allowed beyond the rate's upper bound: a one-word text has little room for ratios.
RATE_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class QualityLimits:
    """When a clip is flagged (GATEWAY_QUALITY_* settings)."""

    max_silence: float = 0.9  # share of silent frames
    max_clipping: float = 0.001  # share of clipped samples
    min_rate_ratio: float = 0.45  # speech seconds / expected seconds below this: too short
    max_rate_ratio: float = 2.5  # above this (plus RATE_SLACK_SECONDS): too long


@dataclass
class QualityReport:
    """The verdict and the figures behind it (what `quality` reports for one attempt)."""

    silence: float
    clipping: float
    seconds: float
    speech_seconds: float  # non-silent frames only: what the rate check compares
    expected_seconds: float | None  # None: the text has nothing to speak
    problems: list[str] = field(default_factory=list)
    similarity: float | None = None  # set by the render service when min_similarity asks for it
    seed: int | None = None  # the seed the attempt was rendered with (None: the engine's own choice)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "silence": round(self.silence, 4),
            "clipping": round(self.clipping, 5),
            "seconds": round(self.seconds, 3),
            "speech_seconds": round(self.speech_seconds, 3),
            "expected_seconds": None if self.expected_seconds is None else round(self.expected_seconds, 3),
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "seed": self.seed,
        }


def clipping_ratio(samples: np.ndarray) -> float:
    """Share of samples at the full-scale ceiling."""
    if len(samples) == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(samples) >= CLIP_LEVEL)) / len(samples)


def _rate_language(language: str, text: str) -> str:
    """The prior's language: the code's base (`all_zh` → zh), or for `auto` the script most units are in."""
    base = language.removeprefix("all_").removeprefix("auto_")
    if base in PRIORS:
        return base
    counts = {"zh": 0, "ja": 0, "ko": 0, "en": 0}
    for ch in text:
        if not ch.isalnum():
            continue
        code = ord(ch)
        if 0x3040 <= code <= 0x30FF:
            counts["ja"] += 1
        elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF:
            counts["ko"] += 1
        elif 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF:
            counts["zh"] += 1
        else:
            counts["en"] += 1
    if counts["ja"]:  # Japanese mixes kana with kanji: any kana decides
        return "ja"
    return max(counts, key=lambda name: counts[name])


def expected_seconds(text: str, language: str, speed: float = 1.0) -> float | None:
    """Typical seconds of speech for `text` at engine speed `speed` (None when nothing is speakable)."""
    units = speakable_units(text)
    if units == 0:
        return None
    return units * PRIORS.get(_rate_language(language, text), PRIORS["en"]) / max(speed, 0.05)


def _silence_and_speech(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """Share of 20 ms frames whose RMS is below SILENCE_RMS (1.0 for an empty clip), and the seconds of the others.

    Each frame's mean square against the squared threshold, summed by einsum without a clip-sized temporary:
    0.12 ms for 5 s at 32 kHz, where square-then-mean-then-sqrt took 0.8 ms (on every whole clip served).
    """
    frame = max(1, int(rate * FRAME_SECONDS))
    count = len(samples) // frame
    frames = samples[: count * frame].reshape(count, frame)
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame
    voiced = int(np.count_nonzero(power >= SILENCE_RMS**2))
    return (1.0 - voiced / count if count else 1.0), voiced * frame / rate


def silence_ratio(samples: np.ndarray, rate: int) -> float:
    """Share of 20 ms frames whose RMS is below SILENCE_RMS (1.0 for an empty clip)."""
    return _silence_and_speech(samples, rate)[0]


def speech_seconds(samples: np.ndarray, rate: int) -> float:
    """Seconds of non-silent frames: the speech without its pauses, which `fragment_interval` and the text's
    punctuation lengthen at will."""
    return _silence_and_speech(samples, rate)[1]


def check(
    samples: np.ndarray, rate: int, text: str, language: str, speed: float = 1.0,
    limits: QualityLimits = QualityLimits(),  # noqa: B008 - frozen, shared safely
) -> QualityReport:
    """Measure a mono float32 clip and judge it against `limits` (problems: silent, clipping, too_short, too_long)."""
    silence, spoken = _silence_and_speech(samples, rate)
    clipping = clipping_ratio(samples)
    seconds = len(samples) / rate if rate else 0.0
    expected = expected_seconds(text, language, speed)
    problems: list[str] = []
    if silence > limits.max_silence:
        problems.append("silent")
    if clipping > limits.max_clipping:
        problems.append("clipping")
    if expected is not None:
        if spoken < expected * limits.min_rate_ratio and "silent" not in problems:
            problems.append("too_short")
        if spoken > expected * limits.max_rate_ratio + RATE_SLACK_SECONDS:
            problems.append("too_long")
    return QualityReport(silence=silence, clipping=clipping, seconds=seconds, speech_seconds=spoken,
                         expected_seconds=expected, problems=problems)
