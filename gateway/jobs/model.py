"""What a dubbing job is: the request a client sends (JobRequest) and the state kept on disk (Job, Segment).

One pydantic model per shape, so the request is validated once and the state file round-trips exactly.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.services.params import EngineKnobs, StretchFields

SegmentStatus = Literal["queued", "running", "done", "failed", "cancelled"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
TrackFormat = Literal["wav", "flac", "mp3"]

MAX_SEGMENTS = 5000
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})


class SegmentRequest(BaseModel):
    """One line to speak. `start`/`end` place it on the track; `end - start` is its target duration unless
    `target_duration` says otherwise. `source_text` is the original line's transcript (speaker references)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    text: str = Field(min_length=1, max_length=5000)
    language: str | None = None
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, ge=0)
    speaker: str | None = Field(None, min_length=1, max_length=64)
    voice: str | None = Field(None, max_length=128)
    target_duration: float | None = Field(None, gt=0, le=600)
    knobs: EngineKnobs | None = None
    source_text: str | None = Field(None, max_length=5000)

    @model_validator(mode="after")
    def _ordered(self) -> SegmentRequest:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class SpeakerRequest(BaseModel):
    """How one speaker sounds when the source track does not say: a library voice or an uploaded reference
    (`reference_audio_base64` in JSON; the file field `speaker.<name>` in multipart)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    voice: str | None = Field(None, max_length=128)
    reference_audio_base64: str | None = None
    prompt_text: str = Field("", max_length=1000)
    prompt_language: str | None = None


class JobRequest(StretchFields):
    """`POST /v1/jobs`: segments (or a subtitle file) plus job-wide defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    segments: list[SegmentRequest] = Field(default_factory=list, max_length=MAX_SEGMENTS)
    subtitles: str | None = Field(None, description="an SRT, WebVTT or ASS file's text (multipart: a file)")
    subtitles_format: Literal["srt", "vtt", "ass"] | None = None
    source_subtitles: str | None = Field(
        None, description="the original-language subtitles (same cues): each cue's text becomes source_text"
    )
    voice: str | None = Field(None, max_length=128, description="default voice (library id or name)")
    language: str = "auto"
    source_language: str | None = Field(None, description="language of the source track's transcript")
    knobs: EngineKnobs | None = None
    seed: int | None = Field(None, ge=-1, le=2**32 - 1)
    format: TrackFormat = "wav"
    sample_rate: int | None = Field(None, ge=8000, le=192_000)
    fit_to_slots: bool = Field(True, description="end - start is the target duration when none is given")
    speakers: dict[str, SpeakerRequest] = Field(default_factory=dict, max_length=64)
    source_audio_base64: str | None = None

    @model_validator(mode="after")
    def _has_lines(self) -> JobRequest:
        if not self.segments and not self.subtitles:
            raise ValueError("a job needs 'segments' or 'subtitles'")
        if self.segments and self.subtitles:
            raise ValueError("send the lines once: 'segments' or 'subtitles', not both")
        return self


class Segment(BaseModel):
    """One line's request and its progress (persisted in the job file)."""

    id: str
    index: int
    text: str
    language: str
    start: float | None = None
    end: float | None = None
    speaker: str | None = None
    voice: str | None = None
    target_duration: float | None = None
    knobs: dict[str, Any] = Field(default_factory=dict)
    source_text: str | None = None

    status: SegmentStatus = "queued"
    attempts: int = 0
    engine: str | None = None
    error: dict[str, Any] | None = None
    audio: str | None = None  # sha256 of the segment's WAV in the job audio dir
    sample_rate: int | None = None
    duration: float | None = None
    timing: dict[str, Any] | None = None  # duration targeting: target, achieved, method ...
    cached: bool = False
    reference_id: str | None = None
    voice_id: str | None = None
    queue_wait: float | None = None
    engine_seconds: float | None = None
    finished_at: float | None = None


class SpeakerReference(BaseModel):
    """Where a speaker's reference came from and what the engine reads."""

    reference_id: str | None = None  # sha256 of the prepared reference in refs/
    voice_id: str | None = None
    prompt_text: str = ""
    prompt_language: str | None = None
    source: Literal["voice", "upload", "source_audio"] | None = None
    spans: list[tuple[float, float]] = Field(default_factory=list)
    error: str | None = None


class Job(BaseModel):
    id: str
    status: JobStatus = "queued"
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    idempotency_key: str | None = None
    request_sha256: str
    voice_id: str | None = None
    language: str = "auto"
    knobs: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    format: TrackFormat = "wav"
    sample_rate: int | None = None
    duration_tolerance: float = 0.05
    max_stretch: tuple[float, float] = (0.8, 1.25)
    speakers: dict[str, SpeakerReference] = Field(default_factory=dict)
    segments: list[Segment] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def progress(self) -> dict[str, Any]:
        counts = {status: 0 for status in ("queued", "running", "done", "failed", "cancelled")}
        for segment in self.segments:
            counts[segment.status] += 1
        total = len(self.segments)
        finished = counts["done"] + counts["failed"] + counts["cancelled"]
        return {"total": total, **counts, "fraction": round(finished / total, 4) if total else 1.0}

    def segment(self, segment_id: str) -> Segment | None:
        return next((segment for segment in self.segments if segment.id == segment_id), None)
