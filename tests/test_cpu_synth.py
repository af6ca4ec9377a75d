"""CPU engine synthesizer: real Piper/espeak-ng speech, GPT-SoVITS segmenting, Praat adaptation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from gateway.cpu_engine import adapt, espeak
from gateway.cpu_engine.synth import PEAK_LIMIT, SynthesisParams, Synthesizer
from gateway.cpu_engine.text import ScriptRun, language_runs, split_text
from tests.support import make_reference, measured_median_f0, rms

ENGLISH = "Hello world, this is the CPU engine speaking with a different voice."


@pytest.fixture(scope="module")
def synthesizer() -> Synthesizer:
    return Synthesizer()


def params(text: str, lang: str, rate: int = 32000, **overrides: Any) -> SynthesisParams:
    """Request fields for a test; no reference and no trailing silence unless overridden."""
    base = SynthesisParams(text=text, text_lang=lang, ref_audio_path=None, output_rate=rate, fragment_interval=0.0)
    return dataclasses.replace(base, **overrides)


# --- languages and rates --------------------------------------------------------------------------

SPEECH_CASES = [
    # lang, text, output rate, plausible seconds (min, max)
    ("en", ENGLISH, 32000, (2.5, 8.0)),  # 12 words
    ("all_zh", "你好，今天天气很好，我们去公园散步吧。", 24000, (2.0, 8.0)),  # 16 syllables
    ("all_ja", "今日は東京に行きます。", 48000, (1.0, 5.0)),  # ~11 morae
    ("all_ko", "안녕하세요, 오늘 날씨가 좋네요.", 32000, (1.2, 6.0)),  # 11 syllables
    ("all_yue", "你好，今日天氣好好。", 32000, (1.0, 5.0)),  # 8 syllables
    ("zh", "我喜欢用Python写程序。", 24000, (1.2, 6.0)),
    ("ja", "私はJohnです。", 32000, (0.8, 4.0)),
    ("auto", "今日は東京に行きます。我喜欢吃苹果. Hello world! 안녕하세요", 48000, (3.0, 12.0)),
    ("auto_yue", "你好 hello, 今日天氣好好。", 32000, (1.5, 7.0)),
]


@pytest.mark.parametrize(("lang", "text", "rate", "seconds"), SPEECH_CASES, ids=[c[0] for c in SPEECH_CASES])
def test_every_language_produces_speech_of_plausible_length(
    synthesizer: Synthesizer, lang: str, text: str, rate: int, seconds: tuple[float, float]
) -> None:
    audio = synthesizer.synthesize(params(text, lang, rate))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert seconds[0] <= audio.size / rate <= seconds[1]
    assert rms(audio) > 0.02
    assert float(np.max(np.abs(audio))) <= PEAK_LIMIT + 1e-6


def test_output_rate_is_honoured(synthesizer: Synthesizer) -> None:
    low = synthesizer.synthesize(params(ENGLISH, "en", 24000, seed=7))
    high = synthesizer.synthesize(params(ENGLISH, "en", 48000, seed=7))
    assert abs(high.size - 2 * low.size) <= 4
    # The same speech at both rates: the 24 kHz signal matches every other 48 kHz sample closely.
    assert rms(high[::2][: low.size] - low) < 0.25 * rms(low)


def test_mixed_chinese_speaks_the_english_word(synthesizer: Synthesizer) -> None:
    with_english = synthesizer.synthesize(params("我喜欢用Python写程序。", "zh"))
    without = synthesizer.synthesize(params("我喜欢用写程序。", "zh"))
    assert with_english.size > without.size + 0.2 * 32000


@pytest.mark.parametrize("adapted", [False, True], ids=["voice", "adapted-to-a-reference"])
def test_same_seed_gives_identical_audio_and_other_seeds_differ(
    synthesizer: Synthesizer, tmp_path: Path, adapted: bool
) -> None:
    # adapted: Praat's PSOLA places unvoiced periods at random, so its generator follows the seed too
    reference = str(make_reference(tmp_path / "ref.wav", 4.0, f0=220.0)) if adapted else None
    first = synthesizer.synthesize(params(ENGLISH, "en", seed=11, ref_audio_path=reference))
    synthesizer.synthesize(params(ENGLISH, "en", ref_audio_path=reference))  # an unseeded request between
    again = synthesizer.synthesize(params(ENGLISH, "en", seed=11, ref_audio_path=reference))
    other = synthesizer.synthesize(params(ENGLISH, "en", seed=12, ref_audio_path=reference))
    assert any(not decision.skip for decision in synthesizer.last_adaptations) == adapted
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("lang_text", [("en", ENGLISH), ("all_zh", "你好，今天天气很好，我们去公园散步吧。")])
def test_faster_speed_gives_shorter_audio(synthesizer: Synthesizer, lang_text: tuple[str, str]) -> None:
    lang, text = lang_text
    normal = synthesizer.synthesize(params(text, lang, seed=3, speed_factor=1.0))
    fast = synthesizer.synthesize(params(text, lang, seed=3, speed_factor=1.5))
    assert fast.size < 0.85 * normal.size


def test_each_segment_ends_with_the_fragment_interval(synthesizer: Synthesizer) -> None:
    text = "你好，我是小明。今天天气很好。"
    expected = split_text(text, "cut5", lang="zh")
    pieces = list(synthesizer.segments(params(text, "all_zh", 32000, fragment_interval=0.25)))
    assert len(pieces) == len(expected) == 2
    gap = int(0.25 * 32000)
    for piece in pieces:
        assert not np.any(piece[-gap:]) and rms(piece[:-gap]) > 0.02


def test_punctuation_only_text_yields_no_segments(synthesizer: Synthesizer) -> None:
    assert list(synthesizer.segments(params("。，！？...", "zh"))) == []
    assert list(synthesizer.segments(params("...!!", "en", cut_punc=",."))) == []
    assert synthesizer.synthesize(params("…", "en")).size == 0


# --- segmenting -----------------------------------------------------------------------------------

ZH_SIX = "今天天气很好。我们去公园散步吧。然后去吃午饭。下午看电影。晚上回家睡觉。明天再见。"
EN_PRICE = "It costs 3.50 dollars. That is cheap. Buy two, please! Really? Yes."


@pytest.mark.parametrize(
    ("text", "method", "count"),
    [
        (ZH_SIX, "cut0", 1),
        ("一。二。三。四。五。六。七。八。九。", "cut1", 2),  # groups of 4; the remainder joins the last group
        ("一。二。三。四。", "cut1", 1),
        ("一二三四五六七八九十一二三四五。" * 12, "cut2", 3),  # a chunk closes past 50 chars (4 x 16)
        ("一二三四五六七八九十一二三四五。" * 10, "cut2", 2),  # ... and a tail under 50 joins the last one
        (ZH_SIX, "cut3", 5),  # "明天再见" is under 5 characters and merges into its neighbour
        (EN_PRICE, "cut4", 3),
        (ZH_SIX, "cut5", 6),
        ("你好，我是小明。你好，我是小红。", "cut5", 2),  # 3-character clauses merge with the next
        (EN_PRICE, "cut5", 6),
    ],
)
def test_split_methods_give_documented_counts(text: str, method: str, count: int) -> None:
    segments = split_text(text, method, lang="en" if text.isascii() else "zh")
    assert len(segments) == count
    assert "".join(segments).replace("。", "").replace(".", "") != ""


def test_cut4_and_cut5_keep_decimal_points() -> None:
    assert split_text(EN_PRICE, "cut4", lang="en")[0] == "It costs 3.50 dollars."
    assert split_text(EN_PRICE, "cut5", lang="en")[0] == "It costs 3.50 dollars."


def test_unterminated_segments_get_a_final_mark_for_their_language() -> None:
    assert split_text("hello there my friend", "cut0", lang="en") == ["hello there my friend."]
    assert split_text("你好世界朋友们", "cut0", lang="zh") == ["你好世界朋友们。"]


def test_overlong_segment_is_force_split() -> None:
    segments = split_text("这是一个很长的句子，" * 80, "cut0", lang="zh")
    assert len(segments) == 2 and all(len(segment) <= 510 for segment in segments)


@pytest.mark.parametrize("method", ["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"])
def test_punctuation_only_text_has_no_segments(method: str) -> None:
    assert split_text("。，！？...…", method) == []
    assert split_text("", method) == []


def test_unknown_split_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="cut9"):
        split_text("hello", "cut9")


def test_api_v1_cut_punc_splits_after_allowed_marks_then_newlines() -> None:
    text = "Hello there, my friend. How are you today? Fine!\nSecond line here"
    assert split_text(text, "cut0", cut_punc=",.?", lang="en") == [
        "Hello there,",
        "my friend.",
        "How are you today?",
        "Fine!",  # "!" is not in cut_punc: this piece ends at the newline instead
        "Second line here.",
    ]


def test_api_v1_cut_punc_ignores_marks_outside_its_set() -> None:
    text = "第一句#第二句#第三句\n第四个句子在这里"
    expected = ["第一句#第二句#第三句。", "第四个句子在这里。"]
    assert split_text(text, "cut5", cut_punc="#", lang="zh") == expected
    assert split_text(text, "cut5", cut_punc="", lang="zh") == expected


def test_api_v1_cut_punc_takes_precedence_over_the_v2_method() -> None:
    text = "你好，我是小明。今天天气很好。"
    assert split_text(text, "cut5", cut_punc="。", lang="zh") == ["你好，我是小明。", "今天天气很好。"]
    assert len(split_text(text, "cut5", lang="zh")) == 2
    assert split_text(text, "cut5", cut_punc="，", lang="zh") == ["你好，我是小明。今天天气很好。"]


# --- script runs ----------------------------------------------------------------------------------


def test_mixed_codes_read_latin_as_english() -> None:
    assert language_runs("我喜欢Python编程。", "zh") == [
        ScriptRun("zh", "我喜欢"),
        ScriptRun("en", "Python"),
        ScriptRun("zh", "编程。"),
    ]
    assert [run.lang for run in language_runs("私はJohnです", "ja")] == ["ja", "en", "ja"]
    assert [run.lang for run in language_runs("저는 Tom 입니다", "ko")] == ["ko", "en", "ko"]


def test_auto_detects_scripts_and_han_next_to_kana_is_japanese() -> None:
    runs = language_runs("今日は東京に行きます。我喜欢吃苹果. Hello world! 안녕하세요", "auto")
    assert [run.lang for run in runs] == ["ja", "zh", "en", "ko"]
    assert runs[0].text == "今日は東京に行きます。"
    assert [run.lang for run in language_runs("你好 hello", "auto_yue")] == ["yue", "en"]


def test_single_language_codes_give_one_run() -> None:
    assert language_runs("Hello 你好", "all_zh") == [ScriptRun("zh", "Hello 你好")]
    assert language_runs("Hello 你好", "en") == [ScriptRun("en", "Hello 你好")]


# --- adaptation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target_hz", "rate", "channels", "suffix"), [(220.0, 44100, 2, "flac"), (95.0, 16000, 1, "wav")]
)
def test_adaptation_moves_output_median_f0_to_the_reference(
    synthesizer: Synthesizer, tmp_path: Path, target_hz: float, rate: int, channels: int, suffix: str
) -> None:
    reference = str(make_reference(tmp_path / f"ref.{suffix}", 4.0, rate, f0=target_hz, channels=channels))
    plain = synthesizer.synthesize(params(ENGLISH, "en", seed=5))
    adapted = synthesizer.synthesize(params(ENGLISH, "en", seed=5, ref_audio_path=reference))
    plain_f0 = measured_median_f0(plain, 32000)
    adapted_f0 = measured_median_f0(adapted, 32000)
    assert abs(adapted_f0 - target_hz) < abs(plain_f0 - target_hz)
    assert abs(adapted_f0 / target_hz - 1.0) < 0.10
    assert any(not decision.skip for decision in synthesizer.last_adaptations)


def test_chinese_follows_a_high_reference(synthesizer: Synthesizer, tmp_path: Path) -> None:
    reference = str(make_reference(tmp_path / "ref.wav", 4.0, f0=220.0))
    adapted = synthesizer.synthesize(
        params("你好，今天天气很好，我们去公园散步吧。", "all_zh", ref_audio_path=reference)
    )
    assert abs(measured_median_f0(adapted, 32000) / 220.0 - 1.0) < 0.10


def test_reference_at_the_voice_pitch_skips_adaptation(synthesizer: Synthesizer, tmp_path: Path) -> None:
    text = "This sentence is spoken at the voice's own pitch."
    rate = synthesizer.internal_rate  # no resampling, so the output is exactly what adapt analysed
    plain = synthesizer.synthesize(params(text, "en", rate, seed=9))
    own = adapt.pitch_stats(plain, rate, adapt.SOURCE_F0_CEIL_HZ)
    assert own is not None
    reference = str(make_reference(tmp_path / "own.wav", 4.0, f0=own.median_hz))
    with_reference = synthesizer.synthesize(params(text, "en", rate, seed=9, ref_audio_path=reference))
    assert [decision.skip for decision in synthesizer.last_adaptations] == [True]
    assert abs(synthesizer.last_adaptations[0].ratio - 1.0) <= adapt.SKIP_TOLERANCE
    assert np.array_equal(plain, with_reference)


def test_unvoiced_or_unreadable_reference_means_no_adaptation(synthesizer: Synthesizer, tmp_path: Path) -> None:
    noise = tmp_path / "noise.wav"
    soundfile.write(str(noise), np.random.default_rng(0).normal(0, 0.1, 48000), 16000)
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    assert adapt.reference_pitch(str(noise)) is None
    assert adapt.reference_pitch(str(broken)) is None
    assert adapt.reference_pitch(str(tmp_path / "missing.wav")) is None
    plain = synthesizer.synthesize(params(ENGLISH, "en", seed=4))
    for reference in (noise, broken):
        assert np.array_equal(
            plain, synthesizer.synthesize(params(ENGLISH, "en", seed=4, ref_audio_path=str(reference)))
        )
        decisions = synthesizer.last_adaptations
        assert len(decisions) == 2 and all(d.skip and d.target_f0 is None for d in decisions)


def test_reference_analysis_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = str(make_reference(tmp_path / "ref.wav", 4.0, f0=220.0))
    first = adapt.reference_pitch(path)
    assert first is not None and abs(first.median_hz - 220.0) < 3.0
    assert adapt.reference_pitch(path) is first
    make_reference(tmp_path / "ref.wav", 4.5, f0=110.0)  # new size and mtime
    second = adapt.reference_pitch(path)
    assert second is not None and abs(second.median_hz - 110.0) < 2.0


def test_plan_skips_small_changes_and_clamps_the_formant_warp() -> None:
    voice = adapt.PitchStats(100.0, 0.2)
    assert adapt.plan(voice, adapt.PitchStats(101.5, 0.2)).skip
    assert adapt.plan(voice, adapt.PitchStats(98.5, 0.2)).skip
    assert not adapt.plan(voice, adapt.PitchStats(103.0, 0.2)).skip
    up = adapt.plan(voice, adapt.PitchStats(200.0, 0.1))
    assert not up.skip and up.ratio == pytest.approx(2.0) and up.formant_warp == pytest.approx(1.25)
    assert up.spread_scale == pytest.approx(0.5)
    down = adapt.plan(voice, adapt.PitchStats(90.0, 0.01))
    assert down.formant_warp == pytest.approx(0.9**0.5) and down.spread_scale == pytest.approx(0.25)
    assert adapt.plan(None, voice).skip and adapt.plan(voice, None).skip


def _log_spectrum(audio: np.ndarray) -> np.ndarray:
    """Long-term average log power spectrum over 1024-sample Hann frames (pitch harmonics blur out)."""
    frames = audio[: audio.size // 1024 * 1024].reshape(-1, 1024) * np.hanning(1024)
    return np.asarray(np.log(np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0) + 1e-12))


def _spectral_stretch(before: np.ndarray, after: np.ndarray) -> float:
    """The factor f (0.70-1.40 in steps of 0.05) for which `after`'s spectrum best matches `before`'s at freq / f."""
    old, new = _log_spectrum(before), _log_spectrum(after)
    bins = np.arange(old.size)
    band = (bins > 10) & (bins < 350)  # about 200 Hz to 7.5 kHz at 22.05 kHz: where the formants are
    factors = np.round(np.arange(0.70, 1.41, 0.05), 2)
    scores = [np.corrcoef(np.interp(bins[band] / f, bins, old), new[band])[0, 1] for f in factors]
    return float(factors[int(np.argmax(scores))])


@pytest.mark.parametrize(("pitch_factor", "formant_warp"), [(2.0, 1.25), (0.81, 0.9)])
def test_adaptation_moves_the_formants_part_of_the_way(
    synthesizer: Synthesizer, pitch_factor: float, formant_warp: float
) -> None:
    rate = synthesizer.internal_rate
    plain = synthesizer.synthesize(params("The formants of this voice move up and down with the pitch.", "en", rate))
    own = adapt.pitch_stats(plain, rate, adapt.SOURCE_F0_CEIL_HZ)
    assert own is not None
    adapted, decision = adapt.adapt(plain, rate, adapt.PitchStats(own.median_hz * pitch_factor, own.log_spread))
    assert decision.formant_warp == pytest.approx(formant_warp)
    assert adapted.size == plain.size
    assert _spectral_stretch(plain, adapted) == pytest.approx(formant_warp)
    assert adapt.median_f0(adapted, rate) == pytest.approx(own.median_hz * pitch_factor, rel=0.05)


# --- espeak binding -------------------------------------------------------------------------------


def test_espeak_binding_speaks_and_rejects_unknown_voices() -> None:
    assert espeak.sample_rate() == 22050
    audio = espeak.synthesize("你好", "cmn")
    assert audio.dtype == np.float32 and 0.2 < audio.size / 22050 < 3.0 and rms(audio) > 0.01
    assert espeak.synthesize("。", "cmn").size < audio.size
    with pytest.raises(espeak.EspeakError, match="no-such-voice"):
        espeak.synthesize("hello", "no-such-voice")
