"""What the client returns: decoded audio plus the metadata the gateway sent with it."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINISHED = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True)
class Audio:
    """Audio bytes as the gateway encoded them, with their sample rate."""

    audio: bytes
    sample_rate: int | None

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_bytes(self.audio)
        return target


@dataclass(frozen=True)
class CloneResult(Audio):
    """`POST /v1/voice-clone`: the WAV (decoded from base64) and every other field of the JSON answer."""

    duration: float
    request_id: str | None
    metadata: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CloneResult:
        meta = {key: value for key, value in body.items() if key != "output_audio_base64"}
        return cls(audio=base64.b64decode(body["output_audio_base64"]), sample_rate=int(body["output_sample_rate"]),
                   duration=float(body["output_duration"]), request_id=body.get("request_id"), metadata=meta)

    def as_json(self) -> dict[str, Any]:
        """The endpoint's JSON answer as it came (what the seed's `/v1/voice-clone` returned, and more)."""
        return {**self.metadata, "output_audio_base64": base64.b64encode(self.audio).decode("ascii")}


@dataclass(frozen=True)
class SpeechResult(Audio):
    """`POST /v1/audio/speech` as a whole clip, in `format`; the rest comes from its `X-*` headers."""

    format: str
    duration: float | None
    request_id: str | None
    voice_id: str | None
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class Track(Audio):
    """A finished job's voice track (`GET /v1/jobs/{id}/track`)."""

    format: str
    segments: int


@dataclass(frozen=True)
class Voice:
    """A library voice; `data` is the whole JSON object (reference hash and length, weights, created_at)."""

    id: str
    name: str
    prompt_text: str
    prompt_language: str
    description: str | None
    is_default: bool
    data: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Voice:
        return cls(id=body["id"], name=body["name"], prompt_text=body.get("prompt_text", ""),
                   prompt_language=body.get("prompt_language", "auto"), description=body.get("description"),
                   is_default=bool(body.get("is_default")), data=body)


@dataclass(frozen=True)
class Job:
    """A dubbing job: status, progress counts (`total`, `done`, `failed`, ..., `fraction`) and the full view."""

    id: str
    status: str
    progress: dict[str, Any]
    data: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        return cls(id=body["id"], status=body["status"], progress=dict(body.get("progress") or {}), data=body)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class Health:
    """`GET /readyz`: whether an engine can serve now, per-engine state, queue depth (both 200 and 503)."""

    ready: bool
    status: str
    data: dict[str, Any] = field(repr=False)
