"""One timeline from many clips: each clip starts at its exact sample, silence between, overlaps mixed.

Pure numpy; clips must already be float32 mono at the track's rate (gateway/audio/convert.py `resample`).
A clip starts at sample round(start × rate), so placement is exact to half a sample. Clips that overlap are
summed and the sum clipped to ±1 (neither line is lost; a dub should not overlap, so each overlap is
reported for the job to show rather than silently resolved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class TimedClip:
    id: str
    start: float  # seconds from the start of the track, >= 0
    samples: np.ndarray  # float32 mono at the track's rate


@dataclass(frozen=True)
class Overlap:
    first: str  # the clip that starts earlier (file order on a tie)
    second: str
    seconds: float  # how long both play at once


@dataclass(frozen=True, eq=False)
class Track:
    samples: np.ndarray  # float32 mono, as long as the last clip's end
    rate: int
    overlaps: list[Overlap] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


def place_on_timeline(clips: Sequence[TimedClip], rate: int) -> Track:
    """Mix `clips` onto one silent timeline; report every pair of clips that sound at the same time."""
    placed: list[tuple[int, int, str, np.ndarray]] = []  # (first sample, end sample, id, samples)
    for clip in clips:
        samples = np.asarray(clip.samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"clip {clip.id!r}: expected mono samples, got shape {samples.shape}")
        if not clip.start >= 0:  # also refuses NaN
            raise ValueError(f"clip {clip.id!r}: start {clip.start} is before the track")
        offset = round(clip.start * rate)
        placed.append((offset, offset + len(samples), clip.id, samples))

    track = np.zeros(max((end for _, end, _, _ in placed), default=0), dtype=np.float32)
    for offset, end, _, samples in placed:
        track[offset:end] += samples
    np.clip(track, -1.0, 1.0, out=track)

    overlaps: list[Overlap] = []
    ordered = sorted(placed, key=lambda item: item[0])  # stable: file order among equal starts
    for k, (_, end, first, _) in enumerate(ordered):
        for other_offset, other_end, second, _ in ordered[k + 1 :]:
            if other_offset >= end:
                break  # sorted by start: no later clip can overlap this one
            shared = min(end, other_end) - other_offset
            if shared > 0:
                overlaps.append(Overlap(first, second, shared / rate))
    return Track(track, rate, overlaps)
