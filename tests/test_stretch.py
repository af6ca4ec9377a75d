"""Time stretch (gateway/audio/stretch.py) and the duration-fitting rules built on it (services/render.py):
pure functions, real audio, pitch measured independently with Praat."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.audio.stretch import atempo_chain, time_stretch
from gateway.audio.wav import pcm16_wav, wav_samples
from gateway.services.render import DurationGoal, Rendered, choose_speed, corrected_speed, fit_duration, stretch_factor
from tests.support import measured_median_f0, rms, speech_like_signal

RATE = 32000


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    """3 s of a harmonic, speech-like signal at a median F0 of 220 Hz."""
    return speech_like_signal(3.0, RATE, f0=220.0)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_stretch_changes_the_length_and_keeps_the_pitch(voice: np.ndarray, factor: float) -> None:
    out = time_stretch(voice, RATE, factor)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == pytest.approx(factor * len(voice), rel=0.01)
    # resampling would move F0 to 220 / factor (176 or 275 Hz); a real time stretch keeps it
    assert measured_median_f0(out, RATE) == pytest.approx(220.0, rel=0.03)
    assert rms(out) == pytest.approx(rms(voice), rel=0.15)  # the level survives: no silence, no clipping


def test_a_factor_of_one_returns_the_input_and_nonsense_factors_are_refused(voice: np.ndarray) -> None:
    assert np.array_equal(time_stretch(voice, RATE, 1.0), voice)
    for factor in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="positive"):
            time_stretch(voice, RATE, factor)


def test_tempos_beyond_one_atempo_instance_are_chained() -> None:
    for tempo in (0.3, 0.1, 1.0, 250.0):
        chain = atempo_chain(tempo)
        assert all(0.5 <= t <= 100 for t in chain), chain
        assert math.prod(chain) == pytest.approx(tempo)
    assert len(atempo_chain(0.3)) == 2
    short = time_stretch(speech_like_signal(1.0, RATE, f0=220.0), RATE, 3.0)  # tempo 1/3: two instances
    assert len(short) == pytest.approx(3 * RATE, rel=0.03)  # each instance's edge windows cost a little


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_the_last_syllable_survives_whole(factor: float) -> None:
    """A tone burst right at the end (speech ending at the clip's last sample) is still there, at least as
    long as stretched: the stretch shortens or lengthens, it never drops the end."""
    burst = speech_like_signal(0.1, RATE, f0=220.0)
    clip = np.concatenate([burst, np.zeros(RATE, dtype=np.float32), burst])
    out = time_stretch(clip, RATE, factor)
    loud = np.flatnonzero(np.abs(out) > 0.02)
    last_start = loud[np.flatnonzero(np.diff(loud) > RATE // 10)[-1] + 1]
    assert len(out) - last_start >= factor * len(burst) * 0.95, (len(out) - last_start, factor * len(burst))
    assert rms(out[last_start:]) > 0.5 * rms(burst)


def test_the_stretch_aims_at_the_target_within_its_bounds() -> None:
    goal = DurationGoal(target=2.0, tolerance=0.05, max_stretch=(0.8, 1.25))
    assert stretch_factor(2.08, goal) == 1.0  # within tolerance: untouched
    assert stretch_factor(2.4, goal) == pytest.approx(2.0 / 2.4)
    assert stretch_factor(4.0, goal) == 0.8  # cannot fit: as far as allowed, never further
    assert stretch_factor(1.0, goal) == 1.25
    assert choose_speed(3.0, goal) == 1.5
    assert choose_speed(10.0, goal) == 2.0 and choose_speed(0.1, goal) == 0.5
    assert choose_speed(None, goal) == 1.0


def test_fit_duration_reports_what_it_did_and_never_cuts(voice: np.ndarray) -> None:
    wav = pcm16_wav(voice, RATE)  # 3.0 s
    fitted, frames, report = fit_duration(wav, DurationGoal(target=2.7), speed=1.0)
    samples, rate = wav_samples(fitted)
    assert rate == RATE and frames == len(samples)
    assert report["method"] == "stretch" and report["within_tolerance"] is True
    assert report["achieved"] == pytest.approx(len(samples) / RATE, abs=1e-3)
    assert report["achieved"] == pytest.approx(2.7, rel=0.01)

    # 3 s cannot become 1 s within 0.8–1.25: stretched by 0.8 and kept whole, reported as missed
    _, frames, report = fit_duration(wav, DurationGoal(target=1.0), speed=1.5)
    assert report["method"] == "speed+stretch" and report["stretch"] == 0.8
    assert report["within_tolerance"] is False
    assert frames / RATE == pytest.approx(0.8 * 3.0, rel=0.01)

    untouched, frames, report = fit_duration(wav, DurationGoal(target=3.05), speed=1.0)
    assert untouched == wav and frames == len(voice)
    assert report == {"target": 3.05, "raw": 3.0, "speech": 3.0, "achieved": 3.0, "method": "none", "speed": 1.0,
                      "stretch": 1.0, "within_tolerance": True}

    # 3 s cannot become 5 s within 0.8–1.25 either: stretched by 1.25, then silence fills the slot
    padded, frames, report = fit_duration(wav, DurationGoal(target=5.0), speed=1.0)
    samples, _ = wav_samples(padded)
    assert report["method"] == "stretch+pad" and report["within_tolerance"] is True
    assert report["speech"] == pytest.approx(3.75, rel=0.01) and frames == round(5.0 * RATE)
    assert rms(samples[: round(3.7 * RATE)]) > 0.05 and not samples[round(3.8 * RATE) :].any()


def test_fit_duration_trims_the_engines_edge_silence_so_speech_starts_on_the_cue(voice: np.ndarray) -> None:
    lead, tail = np.zeros(round(0.25 * RATE), np.float32), np.zeros(round(0.4 * RATE), np.float32)
    padded = pcm16_wav(np.concatenate([lead, voice, tail]), RATE)  # 3.65 s, 3.0 s of it speech
    fitted, _, report = fit_duration(padded, DurationGoal(target=3.0), speed=1.0)
    samples, _ = wav_samples(fitted)
    assert report["raw"] == pytest.approx(3.0, abs=0.011) and report["method"] == "none"
    assert np.flatnonzero(np.abs(samples) > 1e-3)[0] <= round(0.006 * RATE)  # at most the 5 ms kept
    quiet = pcm16_wav(np.zeros(RATE, np.float32), RATE)  # nothing loud: nothing trimmed, nothing lost
    assert fit_duration(quiet, DurationGoal(target=1.0), speed=1.0)[1] == RATE


def test_a_render_the_stretch_cannot_fit_asks_for_a_second_one_at_the_measured_speed() -> None:
    def rendered(raw: float) -> Rendered:
        timing = {"target": 4.4, "raw": raw, "achieved": raw, "method": "speed", "speed": 1.0, "stretch": 1.0,
                  "within_tolerance": False}
        return Rendered(b"", 32000, 0, None, 1, 0.0, 0.0, False, timing)

    goal = DurationGoal(target=4.4)
    assert corrected_speed(rendered(3.28), goal, 1.0) == pytest.approx(0.745, abs=1e-3)  # 1.34x is past 1.25
    assert corrected_speed(rendered(6.0), goal, 1.0) == pytest.approx(1.364, abs=1e-3)  # 0.73x is under 0.8
    assert corrected_speed(rendered(4.0), goal, 1.0) is None  # 1.1x: the stretch reaches it
    assert corrected_speed(rendered(1.0), goal, 0.5) is None  # already as slow as the engine goes
