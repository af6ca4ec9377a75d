"""The speaking-rate predictor (services/speaking_rate.py): pure, in memory."""

from __future__ import annotations

import pytest

from gateway.services.speaking_rate import PRIORS, SpeakingRates, speakable_units


def test_units_are_letters_and_digits_and_one_per_cjk_character() -> None:
    assert speakable_units("Hello, world 42!") == 12
    assert speakable_units("你好，世界。") == 4
    assert speakable_units("こんにちは") == 5
    assert speakable_units("...  !") == 0


def test_prediction_falls_back_from_the_voice_to_the_language_to_the_prior() -> None:
    rates = SpeakingRates()
    text = "ten letter"  # 9 units
    assert rates.predict("voice-a", "en", text) == pytest.approx(9 * PRIORS["en"])
    assert rates.predict("voice-a", "all_zh", "你好") == pytest.approx(2 * PRIORS["zh"])
    assert rates.predict("voice-a", "en", "!!") is None
    rates.observe("voice-a", "en", text, seconds=1.8, speed=1.0)  # 0.2 s a unit
    assert rates.predict("voice-a", "en", text) == pytest.approx(1.8)
    assert rates.predict("voice-b", "en", "abc") == pytest.approx(0.6)  # the language's rate over voices
    assert rates.predict("voice-a", "zh", "你好") == pytest.approx(2 * PRIORS["zh"])  # other language: prior


def test_observations_are_normalised_by_speed_and_averaged() -> None:
    rates = SpeakingRates(alpha=0.5)
    rates.observe("v", "en", "abcd", seconds=1.0, speed=2.0)  # 2 s at speed 1 → 0.5 s a unit
    assert rates.predict("v", "en", "abcd") == pytest.approx(2.0)
    rates.observe("v", "en", "abcd", seconds=4.0, speed=1.0)  # 1.0 s a unit → halfway with alpha 0.5
    assert rates.predict("v", "en", "abcd") == pytest.approx(3.0)
    rates.observe("v", "en", "abcd", seconds=0.0, speed=1.0)  # nothing to learn from
    assert rates.predict("v", "en", "abcd") == pytest.approx(3.0)


def test_the_least_recently_used_voices_are_forgotten() -> None:
    rates = SpeakingRates(max_keys=2)
    for voice in ("a", "b"):
        rates.observe(voice, "en", "abcd", seconds=4.0, speed=1.0)
    rates.predict("a", "en", "x")  # a is now the most recent
    rates.observe("c", "en", "abcd", seconds=8.0, speed=1.0)
    assert len(rates) == 2
    assert rates.predict("a", "en", "abcd") == pytest.approx(4.0)  # kept
    assert rates.predict("b", "en", "abcd") == pytest.approx(5.2)  # forgotten: en's mean over 4, 4, 8 s
