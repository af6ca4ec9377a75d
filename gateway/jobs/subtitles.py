"""Subtitle files (SRT, WebVTT, ASS/SSA) → cues: timing, plain text and speaker, parsed with pysubs2.

Rules, chosen to be predictable rather than clever:

- Format: `format` ("srt", "vtt", "ass", "ssa") or pysubs2's auto-detection; other formats pysubs2 reads
  (MicroDVD, TTML, …) are refused, the issue asks for these three.
- Text: formatting tags removed (ASS override blocks, HTML-style tags, WebVTT timestamps), lines joined with
  one space. Cues left without text are skipped; ASS `Comment:` lines are skipped.
- Speaker, first match wins: the ASS `Name` (actor) field; the first WebVTT voice tag (`<v Alice>`,
  `<v.loud Bob Smith>`); a leading `NAME: ` prefix, where NAME starts with a letter and is at most 32
  characters without spaces or colons, and the colon is followed by a space and more text ("ALICE: Hello"
  → speaker "ALICE", text "Hello"). The prefix is removed from the text only when it is used as the speaker.
  A line such as "Note: bring water" is therefore read as speaker "Note"; give speakers explicitly (ASS
  names, voice tags or the job's segments) when that matters.
- Ids: "1", "2", … by position in the file, counting skipped cues too, so an id names the same cue as the
  file's own numbering (SRT indices, the n-th ASS event).
- `source_text` is always None: a subtitle file carries the translation; the original transcript comes per
  segment in the job.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import pysubs2

from gateway.errors import InvalidInput

MAX_CUES = 5000
MAX_SPEAKER_CHARS = 32
_FORMATS = {"srt": "srt", "vtt": "vtt", "webvtt": "vtt", "ass": "ass", "ssa": "ssa"}
_FORMAT_NAMES = "SRT, WebVTT or ASS/SSA"

# WebVTT voice tag: <v Name>, <v.class Name>; the annotation (the name) is everything up to ">".
_VOICE_TAG = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]*?)\s*>")
# HTML-style tags pysubs2 leaves in SRT/VTT text (we ask it to keep them, so voice tags survive), and
# WebVTT karaoke timestamps such as <00:01.500>.
_MARKUP_TAG = re.compile(r"</?[a-zA-Z][^>]*>|<\d[\d:.]*>")
_SPEAKER_PREFIX = re.compile(rf"([^\W\d_][^\s:]{{0,{MAX_SPEAKER_CHARS - 1}}}):\s+(\S.*)", re.DOTALL)


@dataclass(frozen=True)
class Cue:
    id: str
    start: float  # seconds
    end: float  # seconds; end - start is the segment's target duration
    text: str
    speaker: str | None
    source_text: str | None


def _invalid(message: str, **extra: Any) -> InvalidInput:
    return InvalidInput(message, code="invalid_subtitles", **extra)


def _timestamp(ms: int) -> str:
    return pysubs2.time.ms_to_str(ms, fractions=True)


def _webvtt_cue_blocks(text: str) -> str:
    """Keep only WebVTT cue blocks, each from its timing line on.

    pysubs2 reads WebVTT with its SRT reader, which appends a cue identifier that is not a number, and
    NOTE/STYLE/REGION blocks, to the text of the cue before. Those blocks never contain "-->"; cue text
    cannot either (WebVTT spec), so the timing line is the first line with "-->".
    """
    kept = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = block.split("\n")
        timing = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if timing is not None:
            kept.append("\n".join(lines[timing:]))
    return "WEBVTT\n\n" + "\n\n".join(kept) + "\n"


def _detect(text: str, format: str | None) -> str:
    if format is not None:
        fmt = _FORMATS.get(format.lower())
        if fmt is None:
            raise _invalid(f"unknown subtitle format {format!r}; supported: {', '.join(sorted(set(_FORMATS)))}")
        return fmt
    try:
        detected = pysubs2.formats.autodetect_format(text)
    except pysubs2.exceptions.Pysubs2Error:
        raise _invalid(f"could not read the subtitles as {_FORMAT_NAMES}") from None
    if detected not in _FORMATS.values():
        raise _invalid(f"subtitle format {detected!r} is not supported; send {_FORMAT_NAMES}")
    return detected


def _text_and_voice(event: pysubs2.SSAEvent, fmt: str) -> tuple[str, str | None]:
    """Plain one-line text and the WebVTT voice (None elsewhere) of one event."""
    raw = event.text
    voice = None
    if fmt == "vtt":
        match = _VOICE_TAG.search(raw)
        voice = (match.group(1) or None) if match else None
    plain = pysubs2.SSAEvent(text=_MARKUP_TAG.sub("", raw)).plaintext
    if fmt == "vtt":  # WebVTT escapes &, < and > as character references; SRT and ASS have none
        plain = html.unescape(plain)
    return " ".join(plain.split()), voice


def parse_subtitles(text: str, *, format: str | None = None) -> list[Cue]:
    """Cues in file order; `InvalidInput` (422, code `invalid_subtitles`) names what is wrong."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    fmt = _detect(text, format)
    if fmt == "vtt":
        text = _webvtt_cue_blocks(text)
    try:
        # keep_unknown_html_tags: SRT/VTT voice tags reach us instead of being dropped by pysubs2
        subs = pysubs2.SSAFile.from_string(text, format_=fmt, keep_unknown_html_tags=True)
    except (pysubs2.exceptions.Pysubs2Error, ValueError, KeyError, IndexError) as exc:
        raise _invalid(f"could not parse the subtitles as {fmt.upper()}: {exc}") from None
    if len(subs) > MAX_CUES:
        raise _invalid(f"the subtitles have {len(subs)} cues; at most {MAX_CUES} are accepted", max_cues=MAX_CUES)

    cues: list[Cue] = []
    for position, event in enumerate(subs, start=1):
        if event.is_comment:
            continue
        line, voice = _text_and_voice(event, fmt)
        speaker = (event.name.strip() or None) if fmt in ("ass", "ssa") else voice
        if speaker is None and (prefix := _SPEAKER_PREFIX.fullmatch(line)):
            speaker, line = prefix.group(1), prefix.group(2)
        if not line:
            continue
        if event.end <= event.start:
            raise _invalid(
                f"cue {position} (at {_timestamp(event.start)}) ends at {_timestamp(event.end)}, "
                "not after it starts",
                cue=str(position),
            )
        cues.append(Cue(str(position), event.start / 1000, event.end / 1000, line, speaker, None))
    if not cues:
        raise _invalid("the subtitles contain no cues with text")
    return cues
