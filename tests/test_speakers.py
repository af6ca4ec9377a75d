"""Speaker references cut from a source recording: only the speaker's own voice, 3–10 s, transcript in order.

Pure and fast. The source is synthetic speech with each speaker at their own pitch (tests/dub_support.py),
so "only this speaker's voice" is measured: every voiced frame (WORLD Harvest) sits at their pitch. The
structure is checked too, sample for sample, against the source spans the reference claims to use.
"""

from __future__ import annotations

import numpy as np
import pytest
import pyworld

from gateway.jobs.speakers import (
    EDGE_FADE_SECONDS,
    JOIN_PAUSE_SECONDS,
    SpeakerLine,
    SpeakerReference,
    speaker_references,
)
from gateway.jobs.subtitles import parse_subtitles
from tests.dub_support import SPEAKER_F0, source_track, two_speaker_script, two_speaker_srt
from tests.support import speech_like_signal

RATE = 16000


def voiced_f0(samples: np.ndarray, rate: int = RATE) -> np.ndarray:
    """F0 of every voiced 5 ms frame (Harvest), to see whose voice is in a clip."""
    f0, _ = pyworld.harvest(samples.astype(np.float64), rate, f0_floor=60.0, f0_ceil=700.0, frame_period=5.0)
    return f0[f0 > 0]


def assert_only_voice(reference: SpeakerReference, speaker: str) -> None:
    f0 = voiced_f0(reference.samples)
    assert f0.size > 100, "too little voiced speech to judge"
    for name, pitch in SPEAKER_F0.items():
        near = float(np.mean(np.abs(f0 / pitch - 1.0) < 0.08))
        if name == speaker:
            assert near > 0.97, f"only {near:.1%} of voiced frames at {speaker}'s {pitch:g} Hz"
        else:
            assert near == 0.0, f"{near:.1%} of voiced frames at {name}'s {pitch:g} Hz in {speaker}'s reference"


def tone(seconds: float, level: float = 0.5) -> np.ndarray:
    """A steady 440 Hz sine: any slice of it is predictable, so a reference can be compared to the source."""
    return (level * np.sin(2 * np.pi * 440.0 * np.arange(round(seconds * RATE)) / RATE)).astype(np.float32)


def inner(samples: np.ndarray) -> np.ndarray:
    """Without the edge fades."""
    fade = round(EDGE_FADE_SECONDS * RATE)
    return samples[fade : len(samples) - fade]


def source_slice(source: np.ndarray, start: float, end: float) -> np.ndarray:
    return source[round(start * RATE) : round(end * RATE)]


@pytest.fixture(scope="module")
def dub() -> tuple[np.ndarray, list[SpeakerLine], dict[str, SpeakerReference]]:
    cues = parse_subtitles(two_speaker_srt())
    source = source_track(cues, RATE)
    lines = [SpeakerLine(cue.speaker, cue.start, cue.end, line.source_text)
             for cue, line in zip(cues, two_speaker_script(), strict=True)]
    return source, lines, speaker_references(source, RATE, lines)


def test_long_lines_speaker_gets_their_longest_line(
    dub: tuple[np.ndarray, list[SpeakerLine], dict[str, SpeakerReference]],
) -> None:
    source, lines, references = dub
    alice = references["ALICE"]
    longest = max((line for line in lines if line.speaker == "ALICE"), key=lambda line: line.end - line.start)
    assert alice.spans == [(longest.start, longest.end)]  # 4.4 s: the first of the two longest
    assert alice.prompt_text == longest.source_text
    assert (alice.rate, alice.cut_to_max) == (RATE, False)
    assert len(alice.samples) == round(longest.end * RATE) - round(longest.start * RATE)
    np.testing.assert_array_equal(inner(alice.samples), inner(source_slice(source, longest.start, longest.end)))
    assert_only_voice(alice, "ALICE")


def test_short_lines_speaker_gets_a_joined_reference_of_only_their_voice(
    dub: tuple[np.ndarray, list[SpeakerLine], dict[str, SpeakerReference]],
) -> None:
    source, lines, references = dub
    bob = references["BOB"]
    bob_lines = [line for line in lines if line.speaker == "BOB"]
    assert all(line.end - line.start < 3.0 for line in bob_lines)
    assert 3.0 <= bob.seconds <= 10.0
    assert len(bob.spans) >= 2
    used = [line for line in bob_lines if (line.start, line.end) in bob.spans]
    assert [(line.start, line.end) for line in used] == bob.spans  # his lines, in order
    first = bob_lines.index(used[0])
    assert used == bob_lines[first : first + len(used)]  # neighbouring lines of his, none skipped
    assert bob.prompt_text == " ".join(line.source_text or "" for line in used)
    assert_only_voice(bob, "BOB")
    # Alice speaks between the two lines chosen here: her gap is replaced by a short silence.
    (a_start, a_end), (b_start, b_end) = bob.spans
    assert any(line.speaker == "ALICE" and a_end <= line.start < b_start for line in lines)
    first_part = round(a_end * RATE) - round(a_start * RATE)
    pause = bob.samples[first_part : first_part + round(JOIN_PAUSE_SECONDS * RATE)]
    assert pause.size and not pause.any()
    np.testing.assert_array_equal(inner(bob.samples[:first_part]), inner(source_slice(source, a_start, a_end)))


def test_short_gap_with_nobody_in_it_keeps_its_audio() -> None:
    source = tone(10.0)
    lines = [SpeakerLine("A", 1.0, 2.5, "one"), SpeakerLine("A", 2.7, 4.2, "two")]  # 0.2 s apart
    [(_, reference)] = speaker_references(source, RATE, lines).items()
    assert reference.prompt_text == "one two"
    assert reference.seconds == pytest.approx(3.2)
    np.testing.assert_array_equal(inner(reference.samples), inner(source_slice(source, 1.0, 4.2)))


def test_long_gap_or_someone_in_it_becomes_a_short_silence() -> None:
    source = tone(10.0)
    for lines in (
        [SpeakerLine("A", 1.0, 2.5, "one"), SpeakerLine("A", 4.0, 5.5, "two")],  # 1.5 s apart, nobody between
        [SpeakerLine("A", 1.0, 2.5, "one"), SpeakerLine("B", 2.55, 2.65, "hm"), SpeakerLine("A", 2.7, 4.2, "two")],
        [SpeakerLine("A", 1.0, 2.5, "one"), SpeakerLine(None, 2.55, 2.65, None), SpeakerLine("A", 2.7, 4.2, "two")],
    ):
        reference = speaker_references(source, RATE, lines)["A"]
        pause = min(lines[-1].start - lines[0].end, JOIN_PAUSE_SECONDS)
        assert reference.seconds == pytest.approx(3.0 + pause)
        gap = reference.samples[round(1.5 * RATE) : round((1.5 + pause) * RATE)]
        assert gap.size == round(pause * RATE) and not gap.any(), lines


def test_fewest_lines_then_longest() -> None:
    source = tone(60.0)
    lines = [
        SpeakerLine("A", 1.0, 2.0, "a1"), SpeakerLine("A", 2.1, 3.1, "a2"), SpeakerLine("A", 3.2, 4.2, "a3"),
        SpeakerLine("A", 10.0, 13.5, "long"), SpeakerLine("A", 20.0, 25.0, "longer"),
        SpeakerLine("A", 30.0, 42.0, "too long"),
    ]
    assert speaker_references(source, RATE, lines)["A"].prompt_text == "longer"
    # without lines of 3 s or more: two lines (the longer pair) beat three
    short = [SpeakerLine("A", 1.0, 2.0, "a1"), SpeakerLine("A", 2.1, 3.1, "a2"), SpeakerLine("A", 3.2, 4.2, "a3"),
             SpeakerLine("A", 10.0, 12.0, "b1"), SpeakerLine("A", 20.0, 22.5, "b2")]
    reference = speaker_references(source, RATE, short)["A"]
    assert (reference.prompt_text, reference.spans) == ("b1 b2", [(10.0, 12.0), (20.0, 22.5)])
    assert reference.seconds == pytest.approx(2.0 + JOIN_PAUSE_SECONDS + 2.5)


def test_limits_hold_on_millisecond_times() -> None:
    source = tone(20.0)
    # 4.1 - 1.1 is 2.9999999999999996 in floats: still a 3 s line, chosen alone over a joined pair
    lines = [SpeakerLine("A", 0.0, 0.5, "a"), SpeakerLine("A", 0.55, 1.05, "b"), SpeakerLine("A", 1.1, 4.1, "three"),
             SpeakerLine("A", 6.1, 16.1, "ten")]  # 16.1 - 6.1 is 10.000000000000002: still not cut
    reference = speaker_references(source, RATE, lines)["A"]
    assert (reference.prompt_text, reference.cut_to_max, len(reference.samples)) == ("ten", False, 10 * RATE)
    reference = speaker_references(source, RATE, lines[:3])["A"]
    assert (reference.prompt_text, len(reference.samples)) == ("three", 3 * RATE)


def test_a_line_longer_than_max_is_cut_with_its_text_in_proportion() -> None:
    source = tone(30.0)
    text = " ".join(f"w{k}" for k in range(1, 15))  # 14 words over 14 s
    reference = speaker_references(source, RATE, [SpeakerLine("A", 2.0, 16.0, text)])["A"]
    assert reference.cut_to_max
    assert len(reference.samples) == 10 * RATE
    assert reference.spans == [(2.0, 12.0)]
    assert reference.prompt_text == " ".join(f"w{k}" for k in range(1, 11))
    assert reference.samples[-1] == 0.0  # faded out where it was cut
    unspaced = speaker_references(source, RATE, [SpeakerLine("A", 2.0, 16.0, "あいうえおかきくけこさしすせ")])["A"]
    assert unspaced.prompt_text == "あいうえおかきくけこ"  # no spaces: 10 of 14 characters
    # a clean join is preferred to a cut line
    joined = speaker_references(source, RATE, [SpeakerLine("A", 2.0, 16.0, text), SpeakerLine("A", 20.0, 22.0, "x"),
                                               SpeakerLine("A", 22.2, 24.0, "y")])["A"]
    assert (joined.prompt_text, joined.cut_to_max) == ("x y", False)


def test_joined_run_over_max_is_cut_at_its_end() -> None:
    source = tone(30.0)
    lines = [SpeakerLine("A", 1.0, 3.0, "first"), SpeakerLine("A", 3.1, 5.6, "one two three four five")]
    reference = speaker_references(source, RATE, lines, min_seconds=3.0, max_seconds=4.0)["A"]
    assert reference.cut_to_max and len(reference.samples) == 4 * RATE
    assert reference.spans == [(1.0, 3.0), (3.1, pytest.approx(5.0))]
    assert reference.prompt_text == "first one two three four"  # 1.9 of 2.5 s: 4 of 5 words
    # the limit falls in the pause: the second line is dropped whole
    lines = [SpeakerLine("A", 1.0, 3.0, "first"), SpeakerLine("A", 4.0, 5.0, "second")]
    reference = speaker_references(source, RATE, lines, min_seconds=2.1, max_seconds=2.2)["A"]
    assert reference.cut_to_max and len(reference.samples) == round(2.2 * RATE)
    assert (reference.spans, reference.prompt_text) == ([(1.0, 3.0)], "first")
    assert not reference.samples[2 * RATE :].any()


def test_a_speaker_with_less_than_min_in_total_gets_what_there_is() -> None:
    source = tone(10.0)
    lines = [SpeakerLine("A", 1.0, 2.2, "hello"), SpeakerLine("B", 3.0, 7.0, "long enough"),
             SpeakerLine("A", 8.0, 9.0, "bye")]
    reference = speaker_references(source, RATE, lines)["A"]
    assert reference.seconds == pytest.approx(1.2 + JOIN_PAUSE_SECONDS + 1.0)
    assert reference.seconds < 3.0
    assert reference.prompt_text == "hello bye"


def test_lines_overlapping_another_speaker_are_never_used() -> None:
    source = tone(30.0)
    lines = [
        SpeakerLine("A", 1.0, 9.0, "long but talked over"), SpeakerLine("B", 8.5, 12.0, "interrupting"),
        SpeakerLine("A", 15.0, 18.5, "clean"),
        SpeakerLine("C", 20.0, 24.0, "fully overlapped"), SpeakerLine(None, 21.0, 22.0, None),
    ]
    references = speaker_references(source, RATE, lines)
    assert references["A"].prompt_text == "clean"
    assert "B" not in references  # B's only line overlaps A's
    assert "C" not in references
    # touching is not overlapping
    touching = speaker_references(source, RATE, [SpeakerLine("A", 1.0, 5.0, "a"), SpeakerLine("B", 5.0, 9.0, "b")])
    assert sorted(touching) == ["A", "B"]


def test_unusable_lines_are_skipped_and_spans_clamped_to_the_source() -> None:
    source = tone(10.0)
    lines = [
        SpeakerLine("A", 0.5, 6.0, None), SpeakerLine("A", 0.5, 6.0, "   "),  # no transcript
        SpeakerLine("", 1.0, 2.0, "no speaker"), SpeakerLine(None, 2.0, 3.0, "no speaker"),
        SpeakerLine("A", 7.0, 14.0, "runs past the end"), SpeakerLine("A", 11.0, 12.0, "after the end"),
    ]
    references = speaker_references(source, RATE, lines)
    assert list(references) == ["A"]
    assert references["A"].spans == [(7.0, 10.0)]
    assert references["A"].prompt_text == "runs past the end"
    assert len(references["A"].samples) == 3 * RATE


def test_a_line_overlapping_the_same_speakers_previous_line_is_dropped() -> None:
    source = tone(10.0)
    lines = [SpeakerLine("A", 1.0, 2.5, "one"), SpeakerLine("A", 2.0, 3.5, "duplicate timing"),
             SpeakerLine("A", 3.6, 5.0, "two")]
    reference = speaker_references(source, RATE, lines)["A"]
    assert (reference.prompt_text, reference.spans) == ("one two", [(1.0, 2.5), (3.6, 5.0)])


def test_reference_is_a_copy_and_source_untouched() -> None:
    source = speech_like_signal(5.0, RATE)
    before = source.copy()
    reference = speaker_references(source, RATE, [SpeakerLine("A", 0.0, 4.0, "x")])["A"]
    reference.samples[:] = 0.0
    np.testing.assert_array_equal(source, before)


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="min_seconds <= max_seconds"):
        speaker_references(tone(1.0), RATE, [], min_seconds=5.0, max_seconds=3.0)
