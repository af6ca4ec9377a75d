"""Placing clips on one timeline: exact sample offsets, silence between, overlaps mixed and reported.

Pure and fast. Placement is checked on the encoded track too (WAV and FLAC decoded independently): each
segment's onset must be within 10 ms of its start time, as the issue's dubbing test demands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gateway.audio.convert import encode
from gateway.audio.track import LazyClip, Overlap, TimedClip, mix, place_on_timeline, write_track
from gateway.jobs.subtitles import parse_subtitles
from tests.audio_decode import decode_audio
from tests.dub_support import onsets, two_speaker_srt
from tests.support import speech_like_signal

RATE = 32000


def clip(clip_id: str, start: float, seconds: float, f0: float = 150.0, level: float = 0.5) -> TimedClip:
    return TimedClip(clip_id, start, speech_like_signal(seconds, RATE, f0, level=level))


def test_clips_start_at_their_exact_sample_with_silence_between() -> None:
    clips = [clip("1", 0.5, 1.2), clip("2", 2.25, 0.8, 220.0), clip("3", 3.3333, 1.0, 110.0)]
    track = place_on_timeline(clips, RATE)
    assert (track.rate, track.overlaps) == (RATE, [])
    assert len(track.samples) == round(3.3333 * RATE) + RATE
    position = 0
    for item in clips:
        offset = round(item.start * RATE)
        assert not track.samples[position:offset].any(), f"sound before clip {item.id}"
        np.testing.assert_array_equal(track.samples[offset : offset + len(item.samples)], item.samples)
        position = offset + len(item.samples)
    assert track.samples.dtype == np.float32


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_encoded_track_onsets_within_10_ms_of_cue_times(fmt: str) -> None:
    starts = [0.25, 1.8, 2.9, 4.7, 6.05]
    clips = [clip(str(k), start, 0.9, 120.0 + 30 * k) for k, start in enumerate(starts)]
    data, rate = encode(place_on_timeline(clips, RATE).samples, RATE, fmt)
    decoded, decoded_rate = decode_audio(data, fmt)
    assert decoded_rate == RATE
    found = onsets(decoded, decoded_rate)
    assert len(found) == len(starts), found
    for expected, actual in zip(starts, found, strict=True):
        assert abs(actual - expected) <= 0.010, f"onset at {actual:.3f} s, cue at {expected:.3f} s"


def test_twenty_cue_srt_on_one_track() -> None:
    """The issue's layout check without an engine: every cue's clip sounds from its cue time (±10 ms)."""
    cues = parse_subtitles(two_speaker_srt())
    clips = [TimedClip(cue.id, cue.start, speech_like_signal(cue.end - cue.start, RATE, 140.0)) for cue in cues]
    track = place_on_timeline(clips, RATE)
    assert track.overlaps == []
    assert track.seconds == pytest.approx(cues[-1].end)
    data, _ = encode(track.samples, RATE, "flac")
    found = onsets(*decode_audio(data, "flac"))
    assert found == pytest.approx([cue.start for cue in cues], abs=0.010)


def test_length_is_the_latest_end_not_the_last_clip() -> None:
    track = place_on_timeline([clip("long", 0.0, 5.0), clip("short", 1.0, 0.5)], RATE)
    assert len(track.samples) == 5 * RATE
    assert [o.first for o in track.overlaps] == ["long"]


def test_overlaps_are_mixed_and_reported_with_their_length() -> None:
    a = TimedClip("a", 1.0, np.full(2 * RATE, 0.25, dtype=np.float32))
    b = TimedClip("b", 2.5, np.full(RATE, 0.5, dtype=np.float32))
    c = TimedClip("c", 2.75, np.full(RATE, 0.5, dtype=np.float32))
    track = place_on_timeline([c, a, b], RATE)  # order given does not matter: reported by start time
    assert track.overlaps == [
        Overlap("a", "b", 0.5),
        Overlap("a", "c", 0.25),
        Overlap("b", "c", 0.75),
    ]
    s = track.samples
    assert s[round(2.0 * RATE)] == 0.25  # a alone
    assert s[round(2.6 * RATE)] == 0.75  # a + b
    assert s[round(2.9 * RATE)] == 1.0  # a + b + c = 1.25, clipped to full scale
    assert s[round(3.1 * RATE)] == 1.0  # b + c
    assert s[round(3.6 * RATE)] == 0.5  # c alone
    assert len(s) == round(3.75 * RATE)


def test_touching_clips_do_not_overlap_and_start_ties_keep_given_order() -> None:
    touching = place_on_timeline([clip("x", 0.0, 1.0), clip("y", 1.0, 1.0)], RATE)
    assert touching.overlaps == []
    tie = place_on_timeline([clip("p", 1.0, 1.0), clip("q", 1.0, 0.5)], RATE)
    assert tie.overlaps == [Overlap("p", "q", 0.5)]


def test_start_is_rounded_to_the_nearest_sample() -> None:
    track = place_on_timeline([TimedClip("x", 1.6 / RATE, np.ones(4, dtype=np.float32))], RATE)
    assert track.samples.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_empty_and_invalid_clips() -> None:
    empty = place_on_timeline([], RATE)
    assert (len(empty.samples), empty.overlaps, empty.seconds) == (0, [], 0.0)
    with pytest.raises(ValueError, match="clip 'neg': start -0.1 is before the track"):
        place_on_timeline([clip("neg", -0.1, 1.0)], RATE)
    with pytest.raises(ValueError, match="clip 'nan'"):
        place_on_timeline([clip("nan", float("nan"), 1.0)], RATE)
    with pytest.raises(ValueError, match=r"clip 'st': expected mono samples, got shape \(10, 2\)"):
        place_on_timeline([TimedClip("st", 0.0, np.zeros((10, 2), dtype=np.float32))], RATE)


def test_windows_make_the_same_timeline_and_load_each_clip_only_when_its_window_comes() -> None:
    rate = 8000
    rng = np.random.default_rng(3)
    clips = [(0.05, 0.3), (0.2, 0.5), (1.0, 0.1), (2.73, 0.4)]  # (start, seconds): overlaps and window edges
    samples = [rng.uniform(-0.4, 0.4, round(seconds * rate)).astype(np.float32) for _, seconds in clips]
    loaded: list[str] = []

    def loader(index: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            loaded.append(f"c{index}")
            return samples[index]
        return load

    lazy = [LazyClip(f"c{i}", round(start * rate), loader(i)) for i, (start, _) in enumerate(clips)]
    whole = np.concatenate(list(mix(lazy, 10 * rate)))
    loaded.clear()
    windows = mix(lazy, 1000)  # 0.125 s windows: clips cross window edges
    first = [next(windows) for _ in range(4)]  # up to 0.5 s
    assert loaded == ["c0", "c1"]  # the clips at 1.0 s and 2.73 s are not loaded yet
    rest = list(windows)
    assert loaded == ["c0", "c1", "c2", "c3"]
    assert np.array_equal(np.concatenate(first + rest), whole)
    assert len(whole) == round(2.73 * rate) + len(samples[3])  # ends with the last clip
    expected = np.zeros_like(whole)
    for (start, _), clip in zip(clips, samples, strict=True):
        expected[round(start * rate) : round(start * rate) + len(clip)] += clip
    assert np.allclose(whole, np.clip(expected, -1, 1))
    assert list(mix([], 1000)) == []


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_write_track_encodes_windows_into_a_file_of_the_whole_length(fmt: str, tmp_path: Path) -> None:
    rate = 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.float32)
    lazy = [LazyClip("a", 0, lambda: tone), LazyClip("b", round(2.5 * rate), lambda: tone)]
    path = tmp_path / f"track.{fmt}"
    with path.open("w+b") as out:
        write_track(mix(lazy, 4000), rate, fmt, out)
    if fmt == "mp3":
        decoded, decoded_rate = decode_audio(path.read_bytes(), "mp3")
        assert decoded_rate == rate and abs(len(decoded) / rate - 3.5) < 0.15  # + LAME delay and padding
    else:
        info = sf.info(str(path))
        assert info.samplerate == rate and info.frames == round(3.5 * rate)  # the header knows the length
        samples, _ = sf.read(str(path), dtype="float32")
        assert np.max(np.abs(samples[:rate])) > 0.25
        assert np.max(np.abs(samples[rate + 100 : round(2.5 * rate) - 100])) < 1e-3  # silence between
