"""`POST /v1/speaker-embedding` and seed 001's encoder route `POST /inference/`: who is speaking, as a vector.

Audio arrives as a file (multipart `audio`), as base64 (`audio_base64`, like `reference_audio_base64`
elsewhere), or as seed 001's samples `{"wav": [floats], "sr": int}` (a librosa array turned into a list);
either way it is resampled to 16 kHz mono and embedded by the configured encoder (gateway/speaker). Samples
are validated and converted in a worker thread: a minute of them costs ~90 ms of pydantic and numpy, which the
event loop must not spend.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from gateway.api.context import services
from gateway.api.params import _inline_defs, parse_params
from gateway.api.uploads import is_json, read_json, read_multipart
from gateway.audio.intake import MAX_SOURCE_RATE, MIN_SOURCE_RATE, SILENT_PEAK_DBFS, decode_audio
from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.services.context import Services
from gateway.services.references import decode_base64_reference
from gateway.services.speaker import MAX_EMBED_SECONDS, MIN_EMBED_SECONDS, Embedding

router = APIRouter(tags=["speaker"])

#: Samples beyond this are not float audio in [-1, 1] (int16 PCM sent as numbers, say): refused, not clipped.
MAX_SAMPLE_MAGNITUDE = 2.0


class EmbeddingJson(BaseModel):
    """JSON body of `POST /v1/speaker-embedding`: `audio_base64`, or `wav` + `sr`."""

    audio_base64: str | None = Field(None, description="an audio file (wav, flac, ogg, mp3), base64 or a data: URL")
    wav: list[float] | None = Field(None, description="mono samples in [-1, 1] (seed 001's shape)")
    sr: int | None = Field(None, description="the sample rate of `wav`")


class Samples(BaseModel):
    """Seed 001's encoder request: `{"wav": [floats], "sr": int}`."""

    wav: list[float]
    sr: int


class SpeakerEmbedding(BaseModel):
    embedding: list[float] = Field(description="L2-normalised")
    dim: int = Field(description="256 for ge2e, 192 for ecapa")
    model: str = Field(description="the encoder: ge2e or ecapa")
    duration: float = Field(description="seconds of audio embedded")


class EncoderAnswer(BaseModel):
    """Seed 001's encoder answer."""

    embed: list[float]


def samples_from_list(wav: list[float], rate: int) -> np.ndarray:
    """Check seed 001's samples: a real rate, finite floats in [-1, 1], neither empty nor too long."""
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise InvalidInput(f"sr must be a sample rate between {MIN_SOURCE_RATE} and {MAX_SOURCE_RATE} Hz; got {rate}",
                           code="invalid_sample_rate")
    if not wav:
        raise InvalidInput("wav is empty: send the audio's samples", code="empty_audio")
    if len(wav) > MAX_EMBED_SECONDS * rate:
        raise PayloadTooLarge(f"wav holds {len(wav) / rate:.1f} s of audio at {rate} Hz; at most "
                              f"{MAX_EMBED_SECONDS:g} s is accepted", code="audio_too_long",
                              max_seconds=MAX_EMBED_SECONDS)
    samples = np.asarray(wav, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise InvalidInput("wav holds NaN or infinite values", code="invalid_samples")
    peak = float(np.max(np.abs(samples)))
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise InvalidInput(f"wav samples must be floats in [-1, 1]; the largest is {peak:g} (scale 16-bit PCM by "
                           "1/32768)", code="invalid_samples")
    return np.clip(samples, -1.0, 1.0, out=samples)


def check_audible(samples: np.ndarray, rate: int) -> None:
    """Enough audio, and not silence: an embedding of either would describe no one."""
    if len(samples) < MIN_EMBED_SECONDS * rate:
        raise InvalidInput(f"the audio is {len(samples) / rate:.3f} s long; at least {MIN_EMBED_SECONDS:g} s is "
                           "needed", code="audio_too_short")
    peak = float(np.max(np.abs(samples)))
    if peak <= 10 ** (SILENT_PEAK_DBFS / 20):
        raise InvalidInput("the audio is silent: there is no voice to embed", code="audio_silent")


async def _decoded(svc: Services, data: bytes) -> tuple[np.ndarray, int]:
    return await anyio.to_thread.run_sync(
        lambda: decode_audio(data, max_declared_seconds=MAX_EMBED_SECONDS), limiter=svc.intake_limiter
    )


async def _read_audio(request: Request, svc: Services) -> tuple[np.ndarray, int]:
    """Any of the three body shapes → (mono float32 samples, rate)."""
    limit = svc.settings.max_upload_bytes
    if not is_json(request):
        form = await read_multipart(request, max_file_bytes=limit, file_fields=frozenset({"audio"}))
        if "audio" not in form.files:
            raise InvalidInput("send the audio as the 'audio' file field (or JSON with audio_base64, or wav and sr)",
                               code="missing_audio")
        return await _decoded(svc, form.files["audio"].data)
    fields = await read_json(request, max_bytes=limit * 4 // 3 + 1_000_000)
    body = await anyio.to_thread.run_sync(parse_params, EmbeddingJson, fields)  # a minute of samples: ~30 ms
    if body.audio_base64 is not None and (body.wav is not None or body.sr is not None):
        raise InvalidInput("send either audio_base64 or wav and sr, not both", code="invalid_request")
    if body.audio_base64 is not None:
        return await _decoded(svc, decode_base64_reference(body.audio_base64, limit, field="audio_base64"))
    if body.wav is None or body.sr is None:
        raise InvalidInput("send audio_base64, or wav (samples) with sr (their sample rate)", code="missing_audio")
    return await anyio.to_thread.run_sync(samples_from_list, body.wav, body.sr), body.sr


async def _embed(svc: Services, samples: np.ndarray, rate: int) -> Embedding:
    await anyio.to_thread.run_sync(check_audible, samples, rate)  # up to 11 M samples (60 s at 192 kHz)
    return await svc.speakers.embed(samples, rate)


def _json_body(model: type[BaseModel], files: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _inline_defs(model.model_json_schema())}}
    if files:
        audio = {"type": "string", "format": "binary", "description": "the recording (wav, flac, ogg, mp3)"}
        content["multipart/form-data"] = {
            "schema": {"type": "object", "properties": {"audio": audio}, "required": ["audio"]}
        }
    return {"requestBody": {"required": True, "content": content}}


@router.post(
    "/v1/speaker-embedding",
    summary="A speaker embedding of a recording (16 kHz mono; GE2E 256-d or ECAPA-TDNN 192-d)",
    openapi_extra=_json_body(EmbeddingJson, files=True),
)
async def speaker_embedding(request: Request) -> SpeakerEmbedding:
    svc = services(request)
    await svc.speakers.require()  # 501 before reading an upload this gateway cannot use
    samples, rate = await _read_audio(request, svc)
    result = await _embed(svc, samples, rate)
    return SpeakerEmbedding(embedding=result.vector.tolist(), dim=len(result.vector), model=result.model,
                            duration=round(result.duration, 4))


@router.post(
    "/inference/",
    summary="Seed 001's encoder API: {wav, sr} → {embed}",
    openapi_extra=_json_body(Samples, files=False),
)
@router.post("/inference", include_in_schema=False)  # the same without the slash: no redirect for a POST client
async def inference(request: Request) -> EncoderAnswer:
    svc = services(request)
    await svc.speakers.require()
    fields = await read_json(request, max_bytes=svc.settings.max_upload_bytes * 4 // 3 + 1_000_000)
    body = await anyio.to_thread.run_sync(parse_params, Samples, fields)
    samples = await anyio.to_thread.run_sync(samples_from_list, body.wav, body.sr)
    result = await _embed(svc, samples, body.sr)
    return EncoderAnswer(embed=result.vector.tolist())
