"""What a job gives back: its JSON view (progress, per-segment details and URLs, overlaps) and its audio
(one segment, or every segment placed on one timeline)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gateway.audio.convert import check_output, encode, resample
from gateway.audio.track import WINDOW_SECONDS, LazyClip, mix, write_track
from gateway.audio.wav import wav_samples
from gateway.jobs.model import Job, Segment
from gateway.jobs.store import JobStore


def placements(job: Job) -> list[tuple[Segment, float]]:
    """Where each finished segment starts: its cue time, else right after the segment before it."""
    placed: list[tuple[Segment, float]] = []
    cursor = 0.0
    for segment in job.segments:
        start = segment.start if segment.start is not None else cursor
        if segment.status == "done" and segment.duration is not None:
            placed.append((segment, start))
            cursor = start + segment.duration
        elif segment.start is None and segment.end is not None:
            cursor = segment.end
    return placed


def overlaps(job: Job) -> list[dict[str, Any]]:
    """Pairs of neighbouring segments whose audio overlaps on the track (e.g. a line longer than its slot)."""
    found = []
    placed = sorted(placements(job), key=lambda item: item[1])
    for (first, start), (second, next_start) in zip(placed, placed[1:], strict=False):
        end = start + (first.duration or 0.0)
        if end > next_start + 1e-3:
            found.append({"first": first.id, "second": second.id, "seconds": round(end - next_start, 4)})
    return found


def job_view(job: Job, base_url: str) -> dict[str, Any]:
    root = f"{base_url}/v1/jobs/{job.id}"
    segments = []
    for segment in job.segments:
        shown = segment.model_dump(exclude={"index", "knobs"} if not segment.knobs else {"index"})
        shown["url"] = f"{root}/segments/{segment.id}" if segment.status == "done" else None
        segments.append(shown)
    return {
        **job.model_dump(exclude={"segments", "request_sha256"}),
        "progress": job.progress(),
        "overlaps": overlaps(job),
        "track_url": f"{root}/track" if job.status == "done" else None,
        "events_url": f"{root}/events",
        "segments": segments,
    }


def job_summary(job: Job, base_url: str) -> dict[str, Any]:
    return {
        "id": job.id, "status": job.status, "progress": job.progress(), "created_at": job.created_at,
        "finished_at": job.finished_at, "url": f"{base_url}/v1/jobs/{job.id}",
    }


def job_track_file(job: Job, store: JobStore, fmt: str, sample_rate: int | None) -> tuple[Path, int, int]:
    """The track in a temporary file in the jobs dir (the caller sends and deletes it) → (path, rate, segments
    placed). A feature-length track never sits in memory. Blocking: run it in a worker thread."""
    fd, name = tempfile.mkstemp(dir=store.root, prefix=".track-", suffix=".tmp")  # swept if we die meanwhile
    try:
        with os.fdopen(fd, "w+b") as out:
            rate, placed = _write_job_track(job, store, fmt, sample_rate, out)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name), rate, placed


def _write_job_track(job: Job, store: JobStore, fmt: str, sample_rate: int | None, out: BinaryIO) -> tuple[int, int]:
    """Every done segment at its start time, silence between, encoded into `out` window by window (memory
    stays a window and the segments sounding in it)."""
    placed = placements(job)
    rate = sample_rate or job.sample_rate
    if rate is None:  # the engines' own rate, from the first segment
        rate = placed[0][0].sample_rate if placed and placed[0][0].sample_rate else 32000
    rate = check_output(fmt, rate)

    def loader(digest: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            samples, clip_rate = wav_samples(store.read_audio(digest))
            return resample(samples, clip_rate, rate)

        return load

    clips = [LazyClip(segment.id, round(start * rate), loader(segment.audio or "")) for segment, start in placed]
    windows = mix(clips, WINDOW_SECONDS * rate) if clips else iter([np.zeros(1, dtype=np.float32)])
    write_track(windows, rate, fmt, out)
    return rate, len(clips)


def segment_audio(store: JobStore, segment: Segment, fmt: str, sample_rate: int | None) -> tuple[bytes, int]:
    assert segment.audio is not None
    wav = store.read_audio(segment.audio)
    if fmt == "wav" and sample_rate is None:
        return wav, segment.sample_rate or 0
    samples, rate = wav_samples(wav)
    return encode(samples, rate, fmt, target_rate=sample_rate)
