"""Subtitle parsing: SRT, WebVTT and ASS into cues (timing, plain text, speaker), and every refusal.

Pure and fast: real subtitle text in, `Cue`s or an `InvalidInput` (422, code `invalid_subtitles`) out.
"""

from __future__ import annotations

import pytest

from gateway.errors import InvalidInput
from gateway.jobs.subtitles import MAX_CUES, Cue, parse_subtitles
from tests.dub_support import two_speaker_script, two_speaker_srt

SRT = """1
00:00:01,000 --> 00:00:02,500
ALICE: <i>Hello</i> <font color="#ff0000">there</font>,
<b>my friend</b>.

2
00:00:03,250 --> 00:00:04,000
{\\an8}Bob: hi

3
00:00:05,000 --> 00:00:06,000
<i></i>

4
01:02:03,004 --> 01:02:05,000
No speaker here.
"""

ASS_HEADER = """[Script Info]
ScriptType: v4.00+

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, \
Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, \
MarginV, Encoding
Style: Default,Arial,20,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,2,10,10,10,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
"""


def srt(*cues: tuple[str, str, str]) -> str:
    """SRT from (start, end, text) with times as "HH:MM:SS,mmm"."""
    return "\n".join(f"{i}\n{start} --> {end}\n{text}\n" for i, (start, end, text) in enumerate(cues, start=1))


def invalid(text: str, **kwargs: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_subtitles(text, **kwargs)
    error = caught.value
    assert (error.status, error.code) == (422, "invalid_subtitles")
    return error


# ---------------------------------------------------------------------------- SRT


def test_srt_cues_in_file_order_with_plain_text_and_prefix_speakers() -> None:
    assert parse_subtitles(SRT) == [
        Cue("1", 1.0, 2.5, "Hello there, my friend.", "ALICE", None),
        Cue("2", 3.25, 4.0, "hi", "Bob", None),
        # cue 3 holds only tags: skipped, and the next id stays the file's own number
        Cue("4", 3723.004, 3725.0, "No speaker here.", None, None),
    ]


def test_srt_keeps_file_order_and_crlf_and_bom() -> None:
    text = "\ufeff" + srt(("00:00:05,000", "00:00:06,000", "later"),
                          ("00:00:01,000", "00:00:02,000", "earlier")).replace("\n", "\r\n")
    cues = parse_subtitles(text)
    assert [(cue.id, cue.text, cue.start) for cue in cues] == [("1", "later", 5.0), ("2", "earlier", 1.0)]


@pytest.mark.parametrize(
    ("line", "speaker", "text"),
    [
        ("ALICE: Hello", "ALICE", "Hello"),
        ("Jean-Luc: Engage.", "Jean-Luc", "Engage."),
        ("Émile: Bonjour", "Émile", "Bonjour"),
        (f"{'N' * 32}: at the limit", "N" * 32, "at the limit"),
        (f"{'N' * 33}: one too long", None, f"{'N' * 33}: one too long"),
        ("Dr Smith: two words", None, "Dr Smith: two words"),
        ("12:30 is late", None, "12:30 is late"),
        ("2nd: starts with a digit", None, "2nd: starts with a digit"),
        ("See http://example.com", None, "See http://example.com"),
        ("ALICE:no space", None, "ALICE:no space"),
        ("ALICE:", None, "ALICE:"),
    ],
)
def test_speaker_prefix_rule(line: str, speaker: str | None, text: str) -> None:
    [cue] = parse_subtitles(srt(("00:00:01,000", "00:00:02,000", line)))
    assert (cue.speaker, cue.text) == (speaker, text)


def test_forced_format_and_unknown_format() -> None:
    assert parse_subtitles(SRT, format="SRT")[0].text == "Hello there, my friend."
    error = invalid(SRT, format="sub")
    assert error.message == "unknown subtitle format 'sub'; supported: ass, srt, ssa, vtt, webvtt"


# ---------------------------------------------------------------------------- WebVTT


VTT = """WEBVTT
Kind: captions

intro
00:00:01.000 --> 00:00:02.500
<v Alice>Hello <c.yellow>there</c> &amp; <b>welcome</b></v>

NOTE a comment block
spanning lines

second-cue
00:03.000 --> 00:04.000 align:start position:10%
<v.loud Bob Smith>Hi <00:03.500>you,
see you &lt;soon&gt;

STYLE
::cue { color: red }

00:00:05.000 --> 00:00:06.000
CAROL: no voice tag

00:00:07.000 --> 00:00:08.000
just text
"""


def test_webvtt_voice_tags_identifiers_and_notes() -> None:
    assert parse_subtitles(VTT) == [
        Cue("1", 1.0, 2.5, "Hello there & welcome", "Alice", None),
        Cue("2", 3.0, 4.0, "Hi you, see you <soon>", "Bob Smith", None),
        Cue("3", 5.0, 6.0, "no voice tag", "CAROL", None),
        Cue("4", 7.0, 8.0, "just text", None, None),
    ]
    assert parse_subtitles(VTT, format="vtt") == parse_subtitles(VTT)


# ---------------------------------------------------------------------------- ASS


def test_ass_actor_names_comments_and_override_tags() -> None:
    ass = ASS_HEADER + "\n".join([
        r"Dialogue: 0,0:00:01.00,0:00:02.50,Default,Alice,0,0,0,,{\i1}Hello{\i0} there\Nsecond line",
        r"Comment: 0,0:00:02.00,0:00:03.00,Default,Bob,0,0,0,,a comment is never spoken",
        r"Dialogue: 0,0:00:03.00,0:00:04.25,Default,Bob Smith,0,0,0,,{\pos(10,10)}Hi\hthere, ALICE: not a prefix",
        r"Dialogue: 0,0:00:05.00,0:00:06.00,Default,,0,0,0,,CAROL: no actor name",
        r"Dialogue: 0,0:00:07.00,0:00:08.00,Default,Dave,0,0,0,,{\b1}{\b0}",
    ]) + "\n"
    assert parse_subtitles(ass) == [
        Cue("1", 1.0, 2.5, "Hello there second line", "Alice", None),
        Cue("3", 3.0, 4.25, "Hi there, ALICE: not a prefix", "Bob Smith", None),
        Cue("4", 5.0, 6.0, "no actor name", "CAROL", None),
    ]
    assert parse_subtitles(ass, format="ass") == parse_subtitles(ass)


# ---------------------------------------------------------------------------- refusals


def test_unreadable_text() -> None:
    error = invalid("this is not a subtitle file\nat all\n")
    assert error.message == "could not read the subtitles as SRT, WebVTT or ASS/SSA"


def test_other_formats_pysubs2_knows_are_refused() -> None:
    error = invalid("{0}{25}Hello\n{30}{50}World\n")  # MicroDVD
    assert error.message == "subtitle format 'microdvd' is not supported; send SRT, WebVTT or ASS/SSA"


@pytest.mark.parametrize(
    "text",
    [
        srt(("00:00:01,000", "00:00:02,000", "  "), ("00:00:03,000", "00:00:04,000", "<i> </i>")),
        "WEBVTT\n\nNOTE only a note\n",
        ASS_HEADER + "Comment: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,only a comment\n",
    ],
    ids=["srt-empty-cues", "vtt-note-only", "ass-comment-only"],
)
def test_no_cues_with_text(text: str) -> None:
    assert invalid(text).message == "the subtitles contain no cues with text"


@pytest.mark.parametrize(("start", "end"), [("00:00:05,000", "00:00:04,000"), ("00:00:05,000", "00:00:05,000")])
def test_cue_ending_before_it_starts(start: str, end: str) -> None:
    error = invalid(srt(("00:00:01,000", "00:00:02,000", "fine"), (start, end, "backwards")))
    assert error.message == f"cue 2 (at 0:00:05.000) ends at 0:00:0{end[7]}.000, not after it starts"
    assert error.extra == {"cue": "2"}


def test_empty_cue_with_bad_timing_is_just_skipped() -> None:
    cues = parse_subtitles(srt(("00:00:05,000", "00:00:04,000", "<b></b>"), ("00:00:06,000", "00:00:07,000", "ok")))
    assert [(cue.id, cue.text) for cue in cues] == [("2", "ok")]


def test_cue_cap() -> None:
    def cues(n: int) -> str:
        return "".join(f"{i}\n00:00:01,000 --> 00:00:02,000\nline {i}\n\n" for i in range(1, n + 1))

    assert len(parse_subtitles(cues(MAX_CUES))) == MAX_CUES
    error = invalid(cues(MAX_CUES + 1))
    assert error.message == f"the subtitles have {MAX_CUES + 1} cues; at most {MAX_CUES} are accepted"


# ---------------------------------------------------------------------------- the dubbing fixture


def test_two_speaker_fixture_round_trips() -> None:
    script = two_speaker_script()
    cues = parse_subtitles(two_speaker_srt())
    assert len(cues) == 20
    assert [(c.speaker, c.start, c.end, c.text) for c in cues] == [(s.speaker, s.start, s.end, s.text) for s in script]
    assert all(c.end - c.start < 3.0 for c in cues if c.speaker == "BOB")
    assert all(c.end - c.start >= 3.0 for c in cues if c.speaker == "ALICE")
