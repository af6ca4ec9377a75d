"""The pure quality checks (gateway/audio/quality.py) on synthetic clips, and the aux-reference protocol rules."""

from __future__ import annotations

import numpy as np

from gateway.audio.quality import check, clipping_ratio, expected_seconds, silence_ratio, speech_seconds
from gateway.cpu_engine.faults import FaultController, FaultSettings
from gateway.engine import protocol_v2
from gateway.engine.types import SynthesisRequest
from tests.support import speech_like_signal

RATE = 32000
TEXT = "The quick brown fox jumps over the lazy dog."  # 35 units: 2.8 s by the English prior


def test_a_plausible_clip_passes() -> None:
    clip = np.concatenate([speech_like_signal(2.6, RATE), np.zeros(int(0.3 * RATE), dtype=np.float32)])
    report = check(clip, RATE, TEXT, "en")
    assert report.ok, report
    assert 0.05 < report.silence < 0.2
    assert report.clipping == 0.0
    assert report.expected_seconds is not None and abs(report.expected_seconds - 2.8) < 1e-9


def test_silence_is_flagged_by_its_ratio() -> None:
    clip = np.zeros(3 * RATE, dtype=np.float32)
    assert silence_ratio(clip, RATE) == 1.0
    assert check(clip, RATE, TEXT, "en").problems == ["silent"]  # not also "too_short": one cause, one name
    faint = speech_like_signal(3.0, RATE, level=10 ** (-60 / 20))  # -60 dBFS: a noise floor, not speech
    assert check(faint, RATE, TEXT, "en").problems == ["silent"]


def test_clipping_is_flagged() -> None:
    clip = np.clip(speech_like_signal(2.6, RATE) * 4, -1, 1)
    assert clipping_ratio(clip) > 0.01
    assert check(clip, RATE, TEXT, "en").problems == ["clipping"]


def test_speech_far_too_short_or_long_for_its_text() -> None:
    assert check(speech_like_signal(0.9, RATE), RATE, TEXT, "en").problems == ["too_short"]
    assert check(speech_like_signal(11.0, RATE), RATE, TEXT, "en").problems == ["too_long"]
    # the speed knob scales the expectation: 2.8 s of text at speed 2 is 1.4 s
    assert check(speech_like_signal(1.4, RATE), RATE, TEXT, "en", speed=2.0).ok
    # pauses do not count as speech: a clip padded with silence is still too short
    padded = np.concatenate([speech_like_signal(0.9, RATE), np.zeros(3 * RATE, dtype=np.float32)])
    assert abs(speech_seconds(padded, RATE) - 0.9) < 0.03
    assert "too_short" in check(padded, RATE, TEXT, "en").problems


def test_expected_seconds_per_language_and_script() -> None:
    assert expected_seconds("你好世界", "zh") == expected_seconds("你好世界", "all_zh") == 4 * 0.22
    assert expected_seconds("你好世界", "auto") == 4 * 0.22  # auto: the script decides
    assert expected_seconds("こんにちは", "auto") == 5 * 0.13
    assert expected_seconds("안녕하세요", "auto") == 5 * 0.17
    assert expected_seconds("你好", "auto_yue") == 2 * 0.22  # auto_yue: Cantonese
    assert expected_seconds("...", "en") is None  # nothing speakable: no rate check
    assert check(np.zeros(RATE, dtype=np.float32), RATE, "...", "en").problems == ["silent"]


def test_fault_count_makes_a_one_shot_fault() -> None:
    faults = FaultController(FaultSettings(fault="mute", fault_after=1, fault_count=2))
    assert [faults.admit() for _ in range(5)] == [None, "mute", "mute", None, None]
    faults.update({"fault": "short", "fault_after": 0, "fault_count": 1})  # counts from now
    assert [faults.admit() for _ in range(3)] == ["short", None, None]


def test_v3_and_v4_engines_get_a_warning_for_extra_references() -> None:
    req = SynthesisRequest("hi there", "en", "/refs/a.wav", "A reference.", "en", aux_reference_paths=("/refs/b.wav",))
    body, warnings = protocol_v2.build_tts_body(req, streaming=False, version="v2")
    assert body["aux_ref_audio_paths"] == ["/refs/b.wav"] and warnings == []
    _, warnings = protocol_v2.build_tts_body(req, streaming=False, version="v4")
    assert warnings == ["extra references are ignored by v4 models: only the main reference is used"]
