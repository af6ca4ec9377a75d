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

    @property
    def quality(self) -> dict[str, Any] | None:
        """The gateway's checks of the output: `ok`, `problems`, and per-attempt figures (`similarity` with
        `min_similarity`); None from a gateway too old to check."""
        quality: dict[str, Any] | None = self.metadata.get("quality")
        return quality

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

    @property
    def quality_ok(self) -> bool | None:
        """`X-Quality-Ok`: whether the output passed the gateway's checks (None when not reported)."""
        value = self.headers.get("x-quality-ok")
        return None if value is None else value == "true"

    @property
    def quality_problems(self) -> list[str]:
        """`X-Quality-Problems`: what the checks found (`silent`, `clipping`, `too_short`, ...)."""
        value = self.headers.get("x-quality-problems", "none")
        return [] if value == "none" else value.split(",")


@dataclass(frozen=True)
class SpeakerEmbedding:
    """`POST /v1/speaker-embedding`: an L2-normalised vector (256-d GE2E or 192-d ECAPA) of who is speaking."""

    embedding: list[float]
    dim: int
    model: str
    duration: float

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SpeakerEmbedding:
        return cls(embedding=[float(x) for x in body["embedding"]], dim=int(body["dim"]), model=str(body["model"]),
                   duration=float(body["duration"]))

    def similarity(self, other: SpeakerEmbedding) -> float:
        """Cosine similarity (both are unit vectors); the gateway warns of a duplicate voice from 0.9
        (GATEWAY_VOICE_DUPLICATE_SIMILARITY)."""
        if other.model != self.model:
            raise ValueError(f"embeddings of different models ({self.model}, {other.model}) do not compare")
        return sum(a * b for a, b in zip(self.embedding, other.embedding, strict=True))


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
