"""Dubbing fixtures: a two-speaker SRT and the synthetic "original recording" its cues were cut from.

ALICE speaks 3.2–4.4 s lines, BOB only 1.2–1.8 s lines (every one under the 3 s a reference needs, so his
reference must be joined from several lines). Each speaker's lines are `speech_like_signal` at their own
pitch (`SPEAKER_F0`, not an octave apart, so a pitch tracker's octave error cannot pass for the other
speaker), with silence between lines. The SRT names speakers with the "NAME: " prefix; its text is the
translation, and each `ScriptLine.source_text` is the original transcript a job sends per segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tests.support import speech_like_signal

SPEAKER_F0 = {"ALICE": 230.0, "BOB": 140.0}
#: who speaks line i (cycled): BOB twice in a row, so some of his lines are 0.2 s apart with nobody between
SPEAKER_PATTERN = ("ALICE", "BOB", "BOB", "ALICE", "BOB")
GAP_SECONDS = 0.6  # between lines of different speakers
SAME_SPEAKER_GAP_SECONDS = 0.2  # between consecutive lines of the same speaker
TAIL_SECONDS = 0.5  # silence after the last line


@dataclass(frozen=True)
class ScriptLine:
    speaker: str
    start: float
    end: float
    text: str  # the translation (what the SRT carries)
    source_text: str  # the original transcript


class TimedLine(Protocol):
    @property
    def speaker(self) -> str | None: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


def two_speaker_script(n: int = 20) -> list[ScriptLine]:
    """`n` lines, times on whole milliseconds (SRT precision)."""
    lines: list[ScriptLine] = []
    t = 1.0
    for i in range(n):
        speaker = SPEAKER_PATTERN[i % len(SPEAKER_PATTERN)]
        seconds = 3.2 + 0.4 * (i % 4) if speaker == "ALICE" else 1.2 + 0.3 * (i % 3)
        if lines:
            t += SAME_SPEAKER_GAP_SECONDS if lines[-1].speaker == speaker else GAP_SECONDS
        start, end = round(t, 3), round(t + seconds, 3)
        lines.append(ScriptLine(speaker, start, end, f"Translated line {i + 1} by {speaker.title()}.",
                                f"Original line {i + 1} spoken by {speaker.title()}."))
        t = end
    return lines


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def two_speaker_srt(n: int = 20) -> str:
    """The script as SRT, speakers as "NAME: " prefixes."""
    blocks = [f"{i}\n{_srt_time(line.start)} --> {_srt_time(line.end)}\n{line.speaker}: {line.text}\n"
              for i, line in enumerate(two_speaker_script(n), start=1)]
    return "\n".join(blocks)


def source_track(cues: Sequence[TimedLine], rate: int) -> np.ndarray:
    """The original recording: each cue's speaker at their pitch over exactly [start, end), silence elsewhere."""
    length = round((max(cue.end for cue in cues) + TAIL_SECONDS) * rate)
    track = np.zeros(length, dtype=np.float32)
    for cue in cues:
        assert cue.speaker in SPEAKER_F0, f"no pitch for speaker {cue.speaker!r}"
        start, end = round(cue.start * rate), round(cue.end * rate)
        track[start:end] = speech_like_signal((end - start) / rate, rate, SPEAKER_F0[cue.speaker])
    return track


def onsets(samples: np.ndarray, rate: int, threshold: float = 0.02, min_silence: float = 0.05) -> list[float]:
    """Times (1 ms resolution) where sound starts after at least `min_silence` of near-silence.

    For checking a dubbed track's layout: each segment's onset should be within 10 ms of its cue time.
    Needs segments separated by at least `min_silence` of silence (the fixture's lines are ≥ 0.2 s apart).
    """
    hop = rate // 1000
    loud = np.abs(samples[: len(samples) // hop * hop]).reshape(-1, hop).max(axis=1) > threshold
    quiet = round(min_silence * 1000)
    return [k / 1000 for k in np.flatnonzero(loud).tolist() if k == 0 or not loud[max(0, k - quiet) : k].any()]

