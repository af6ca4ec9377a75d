"""Speaker references cut from a job's source recording: 3–10 s of each speaker's own lines plus transcript.

Per speaker, from the lines that have a transcript (`source_text`):

1. Lines that overlap another speaker's line (or a line with no speaker) are never used: their audio holds
   two voices and their transcript would not match a piece of it. A line that overlaps the speaker's own
   previous line is dropped as a timing error.
2. A run is a sequence of the speaker's consecutive usable lines (in time order, other speakers' lines
   may lie between them). Its reference is the lines' audio joined in order; between two lines, at most
   `JOIN_PAUSE_SECONDS` of the gap is kept: the real audio when the gap is that short and holds no other
   line, else that much silence (so another speaker's audio never gets in).
3. The chosen run is, in order of preference: one that reaches `min_seconds` without exceeding
   `max_seconds`; with the fewest lines (one line if any is long enough, the longest such); the longest;
   the earliest. Each run grows from its first line only until it reaches `min_seconds`.
4. A run that exceeds `max_seconds` (e.g. a single 14 s line) is cut at the end; its last line's
   transcript is then cut in proportion (whole words, or characters in unspaced scripts) and
   `cut_to_max` says the prompt text is an estimate.
5. A speaker whose usable lines add up to less than `min_seconds` gets all of them joined, shorter than
   asked: `seconds` shows it. No padding: the caller (intake refuses < 3 s) reports the speaker.

Speakers without any usable line are absent from the result.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

JOIN_PAUSE_SECONDS = 0.3  # longest pause kept between joined lines: a natural breath, not a scene
EDGE_FADE_SECONDS = 0.01  # every piece cut out of the source fades in/out, so a cut mid-signal never clicks
_EPSILON = 1e-9  # float sums of millisecond times: 5.3 - 2.3 must still count as 3 s


@dataclass(frozen=True)
class SpeakerLine:
    """One line of the source recording: who says it, when (seconds), and its original transcript."""

    speaker: str | None
    start: float
    end: float
    source_text: str | None


@dataclass(frozen=True, eq=False)
class SpeakerReference:
    samples: np.ndarray  # float32 mono at `rate` (the source's rate)
    rate: int
    prompt_text: str  # the used lines' transcripts in order, joined with spaces
    spans: list[tuple[float, float]]  # the source span (seconds) of each used line, in order
    cut_to_max: bool = False  # the last line was cut at max_seconds; its transcript is cut in proportion

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


@dataclass(frozen=True)
class _Line:
    start: float
    end: float
    text: str

    @property
    def seconds(self) -> float:
        return self.end - self.start


class _Intervals:
    """A set of time intervals, merged, asking "does any of them overlap (a, b)?" in O(log n)."""

    def __init__(self, spans: Iterable[tuple[float, float]]) -> None:
        merged: list[list[float]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [span[0] for span in merged]
        self._ends = [span[1] for span in merged]

    def overlaps(self, start: float, end: float) -> bool:
        if end <= start:
            return False
        k = bisect.bisect_right(self._ends, start)  # the first interval ending after `start`
        return k < len(self._starts) and self._starts[k] < end


def _clamped(line: SpeakerLine, length: float) -> tuple[float, float]:
    return max(0.0, line.start), min(line.end, length)


def _usable_lines(speaker: str, lines: Sequence[SpeakerLine], length: float) -> list[_Line]:
    others = _Intervals(
        span for line in lines if line.speaker != speaker and (span := _clamped(line, length))[1] > span[0]
    )
    usable: list[_Line] = []
    for line in sorted((line for line in lines if line.speaker == speaker), key=lambda line: line.start):
        start, end = _clamped(line, length)
        text = (line.source_text or "").strip()
        if not text or end <= start or others.overlaps(start, end):
            continue
        if usable and start < usable[-1].end:
            continue
        usable.append(_Line(start, end, text))
    return usable


def _choose_run(own: list[_Line], min_seconds: float, max_seconds: float) -> list[_Line]:
    """The preferred run (see the module docstring), found with two pointers over running totals."""
    # total[k]: length of the run own[0..k] joined, pauses included; run i..j is total[j] - total[i] + own[i]
    total = [own[0].seconds]
    for prev, line in zip(own, own[1:], strict=False):
        total.append(total[-1] + min(line.start - prev.end, JOIN_PAUSE_SECONDS) + line.seconds)
    best: tuple[tuple[bool, int, float, int], int, int] | None = None
    j = 0
    for i, first in enumerate(own):
        j = max(j, i)
        while j < len(own) - 1 and total[j] - total[i] + first.seconds < min_seconds - _EPSILON:
            j += 1
        seconds = total[j] - total[i] + first.seconds
        if seconds < min_seconds - _EPSILON:
            break  # later starts only shrink
        key = (seconds > max_seconds + _EPSILON, j - i, -min(seconds, max_seconds), i)
        if best is None or key < best[0]:
            best = (key, i, j)
    if best is None:
        return own  # less than min_seconds in all: everything there is
    return own[best[1] : best[2] + 1]


def _faded(samples: np.ndarray, rate: int, *, fade_in: bool = True) -> np.ndarray:
    """A float32 copy with a short fade-out (and fade-in) where it was cut."""
    piece = samples.astype(np.float32)  # always a copy: the source is never modified
    fade = min(len(piece) // 2, round(EDGE_FADE_SECONDS * rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        if fade_in:
            piece[:fade] *= ramp
        piece[len(piece) - fade :] *= ramp[::-1]
    return piece


def _cut_text(text: str, share: float) -> str:
    words = text.split()
    if len(words) > 1:
        return " ".join(words[: max(1, round(len(words) * share))])
    return text[: max(1, round(len(text) * share))]


def _render(
    source: np.ndarray, rate: int, run: list[_Line], everyone: _Intervals, max_seconds: float
) -> SpeakerReference:
    # chunks: contiguous source spans (start, end), each preceded by `pause` seconds of silence
    chunks: list[list[float]] = [[0.0, run[0].start, run[0].end]]
    for line in run[1:]:
        gap = line.start - chunks[-1][2]
        if gap <= JOIN_PAUSE_SECONDS and not everyone.overlaps(chunks[-1][2], line.start):
            chunks[-1][2] = line.end  # keep the gap's own audio: same speaker, nobody else in it
        else:
            chunks.append([min(gap, JOIN_PAUSE_SECONDS), line.start, line.end])
    parts: list[np.ndarray] = []
    for pause, start, end in chunks:
        parts.append(np.zeros(round(pause * rate), dtype=np.float32))
        parts.append(_faded(source[round(start * rate) : round(end * rate)], rate))
    samples = np.concatenate(parts)

    limit = round(max_seconds * rate)
    spans = [(line.start, line.end) for line in run]
    texts = [line.text for line in run]
    if len(samples) <= limit:
        return SpeakerReference(samples, rate, " ".join(texts), spans)
    # Cut at the limit: find where it falls in source time (chunk by chunk), keep the lines before it.
    cut_source, position = run[-1].end, 0
    for pause, start, end in chunks:
        position += round(pause * rate)
        if position + round(end * rate) - round(start * rate) >= limit:
            cut_source = max(start, start + (limit - position) / rate)
            break
        position += round(end * rate) - round(start * rate)
    kept = [k for k, (start, _) in enumerate(spans) if start < cut_source]
    last = kept[-1]
    first_second, last_second = spans[last]
    end = min(cut_source, last_second)  # the cut may fall in a kept gap after the line
    spans = [*spans[:last], (first_second, end)]
    texts = [*texts[:last], _cut_text(texts[last], (end - first_second) / (last_second - first_second))]
    cut = _faded(samples[:limit], rate, fade_in=False)
    return SpeakerReference(cut, rate, " ".join(texts), spans, cut_to_max=True)


def speaker_references(
    source: np.ndarray,
    rate: int,
    lines: Sequence[SpeakerLine],
    *,
    min_seconds: float = 3.0,
    max_seconds: float = 10.0,
) -> dict[str, SpeakerReference]:
    """One reference per speaker with a usable line, cut from `source` (float32 mono at `rate`)."""
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds} and {max_seconds}")
    length = len(source) / rate
    everyone = _Intervals(span for line in lines if (span := _clamped(line, length))[1] > span[0])
    references: dict[str, SpeakerReference] = {}
    speakers: dict[str, None] = {}  # in order of first appearance; "" counts as no speaker
    for line in lines:
        if line.speaker:
            speakers[line.speaker] = None
    for speaker in speakers:
        own = _usable_lines(speaker, lines, length)
        if own:
            run = _choose_run(own, min_seconds, max_seconds)
            references[speaker] = _render(source, rate, run, everyone, max_seconds)
    return references
