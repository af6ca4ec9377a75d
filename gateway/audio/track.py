"""One timeline from many clips: each clip starts at its exact sample, silence between, overlaps mixed.

Pure numpy; clips must already be float32 mono at the track's rate (gateway/audio/convert.py `resample`).
The timeline is made window by window (`mix`), loading each clip only when its window comes and dropping it
once passed, so a feature-length track costs a window and the clips sounding in it, not hours of samples
(a 2 h track at 32 kHz would be 920 MB of float32); `write_track` encodes the windows straight to a file.
A clip starts at sample round(start × rate), so placement is exact to half a sample. Clips that overlap are
summed and the sum clipped to ±1 (neither line is lost; a dub should not overlap, so each overlap is
reported for the job to show rather than silently resolved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import soundfile as sf

from gateway.audio.encoders import AvEncoder, LameEncoder

#: Samples mixed at a time: 30 s at 48 kHz is under 6 MB of float32.
WINDOW_SECONDS = 30


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


@dataclass(frozen=True, eq=False)
class LazyClip:
    """A clip whose samples are loaded only when the timeline reaches it."""

    id: str
    offset: int  # first sample on the track
    load: Callable[[], np.ndarray]  # float32 mono at the track's rate


def mix(clips: Sequence[LazyClip], window: int) -> Iterator[np.ndarray]:
    """The timeline in consecutive windows of `window` samples (the last one shorter): silence where no clip
    sounds, overlapping clips summed and clipped to ±1. Ends with the last clip's end."""
    pending = sorted(clips, key=lambda clip: clip.offset)  # stable: given order among equal offsets
    active: list[tuple[int, np.ndarray]] = []
    start, next_clip = 0, 0
    while next_clip < len(pending) or active:
        end = start + window
        while next_clip < len(pending) and pending[next_clip].offset < end:
            clip = pending[next_clip]
            active.append((clip.offset, np.asarray(clip.load(), dtype=np.float32)))
            next_clip += 1
        if next_clip == len(pending):  # nothing left to come: stop at the last end
            end = min(end, max(offset + len(samples) for offset, samples in active))
        out = np.zeros(max(0, end - start), dtype=np.float32)
        for offset, samples in active:
            low, high = max(offset, start), min(offset + len(samples), end)
            if high > low:
                out[low - start : high - start] += samples[low - offset : high - offset]
        np.clip(out, -1.0, 1.0, out=out)
        if len(out):
            yield out
        active = [(offset, samples) for offset, samples in active if offset + len(samples) > end]
        start = end


def write_track(windows: Iterable[np.ndarray], rate: int, fmt: str, out: BinaryIO) -> None:
    """Encode the windows to a seekable file as wav (PCM16), flac or mp3, with the project's encoder settings
    (the file is seekable, so WAV and FLAC headers carry the real length)."""
    if fmt == "wav":
        with sf.SoundFile(out, "w", rate, 1, subtype="PCM_16", format="WAV") as wav:
            for samples in windows:
                wav.write(samples)
        return
    encoder = LameEncoder(rate, rate) if fmt == "mp3" else AvEncoder(fmt, rate, rate, sink=out)
    for samples in windows:
        out.write(encoder.feed_samples(samples))
    out.write(encoder.finish())


def _given(samples: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: samples


def place_on_timeline(clips: Sequence[TimedClip], rate: int) -> Track:
    """Mix `clips` onto one silent timeline (in memory: for short tracks and tests; `mix` is the same
    timeline in windows); report every pair of clips that sound at the same time."""
    placed: list[tuple[int, int, str, np.ndarray]] = []  # (first sample, end sample, id, samples)
    for clip in clips:
        samples = np.asarray(clip.samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"clip {clip.id!r}: expected mono samples, got shape {samples.shape}")
        if not clip.start >= 0:  # also refuses NaN
            raise ValueError(f"clip {clip.id!r}: start {clip.start} is before the track")
        offset = round(clip.start * rate)
        placed.append((offset, offset + len(samples), clip.id, samples))

    lazy = [LazyClip(clip_id, offset, _given(samples)) for offset, _, clip_id, samples in placed]
    windows = list(mix(lazy, WINDOW_SECONDS * rate))
    track = np.concatenate(windows) if windows else np.zeros(0, dtype=np.float32)

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
