"""Placing clips on one timeline: exact sample offsets, silence between, overlaps mixed and reported.

Pure and fast. Placement is checked on the encoded track too (WAV and FLAC decoded independently): each
segment's onset must be within 10 ms of its start time, as the issue's dubbing test demands.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.audio.convert import encode
from gateway.audio.track import Overlap, TimedClip, place_on_timeline
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
