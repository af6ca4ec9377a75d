"""`POST /v1/voice-clone`: reference + text in, base64 WAV with timing metadata out."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from gateway.api.context import request_timeout, services, unless_disconnected
from gateway.api.params import CloneParams, openapi_body, parse_params
from gateway.api.uploads import read_json, read_multipart
from gateway.errors import InvalidInput
from gateway.services.references import decode_base64_reference
from gateway.services.streaming import open_stream
from gateway.services.synthesis import CloneOutcome, clone, prepare_clone

router = APIRouter()

_AUDIO_PLACEHOLDER = "\x00audio\x00"


def _json_with_audio(meta: dict[str, Any], audio_b64: str) -> bytes:
    """Splice the (JSON-safe) base64 into the serialised metadata instead of re-escaping ~MBs (DESIGN §8)."""
    head, tail = json.dumps({**meta, "output_audio_base64": _AUDIO_PLACEHOLDER}).split(
        json.dumps(_AUDIO_PLACEHOLDER)
    )
    return b"".join((head.encode(), b'"', audio_b64.encode("ascii"), b'"', tail.encode()))


def _shape(outcome: CloneOutcome, request_id: str, text_length: int, encode_seconds: float) -> dict[str, Any]:
    result, ref = outcome.result, outcome.reference
    engine_seconds = result.engine_seconds
    return {
        "task": "voice-clone",
        "output_sample_rate": result.sample_rate,
        "text_length": text_length,
        "output_duration": round(result.duration, 4),
        "processing_time": round(outcome.total_seconds + encode_seconds, 4),
        "service_available": True,
        "request_id": request_id,
        "timings": {
            "queue_wait": round(result.queue_wait, 4),
            "reference_prep": round(ref.prep_seconds, 4),
            "engine": round(engine_seconds, 4),
            "encode": round(encode_seconds, 4),
        },
        "rtf": round(engine_seconds / result.duration, 4) if result.duration else None,
        "engine": {"url": result.engine.url, "flavor": result.engine.flavor, "version": result.engine.version},
        "attempts": result.attempts,
        "reference_id": ref.reference_id,
        "voice_id": ref.voice_id,
        "text_language": outcome.text_language,
        "warnings": [*ref.warnings, *result.warnings],
    }


@router.post(
    "/v1/voice-clone",
    summary="Clone a voice: reference audio + text → base64 WAV with timing metadata",
    responses={200: {"description": "JSON with output_audio_base64 and metadata"}},
    openapi_extra=openapi_body(CloneParams, files={"audio": "the reference recording (wav, flac, ogg, mp3)"}),
)
async def voice_clone(request: Request) -> Response:
    svc = services(request)
    limit = svc.settings.max_upload_bytes
    timeout = request_timeout(request)
    content_type = request.headers.get("content-type", "")
    audio: bytes | None
    if content_type.startswith("application/json"):
        # base64 inflates by 4/3; allow for it plus the other fields
        fields = await read_json(request, max_bytes=limit * 4 // 3 + 1_000_000)
        params = parse_params(CloneParams, fields)
        b64 = params.reference_audio_base64
        audio = decode_base64_reference(b64, limit) if b64 else None
    else:
        form = await read_multipart(request, max_file_bytes=limit)
        params = parse_params(CloneParams, dict(form.fields))
        upload = form.files.get("audio")
        unexpected = sorted(set(form.files) - {"audio"})
        if unexpected:
            raise InvalidInput(f"unexpected file field '{unexpected[0]}'; send the reference as 'audio'")
        audio = upload.data if upload is not None else None
    if params.stream:
        return await _stream(request, params, audio, timeout)
    outcome = await unless_disconnected(request, clone(svc, params, audio, timeout=timeout))
    started = anyio.current_time()
    audio_b64 = await anyio.to_thread.run_sync(lambda: base64.b64encode(outcome.result.wav).decode("ascii"))
    encode_seconds = anyio.current_time() - started
    meta = _shape(outcome, request.state.request_id, len(params.text), encode_seconds)
    return Response(_json_with_audio(meta, audio_b64), media_type="application/json")


async def _stream(request: Request, params: CloneParams, audio: bytes | None, timeout: float | None) -> Response:
    """`stream=true`: WAV bytes as the engine produces them (metadata in headers, no JSON envelope)."""
    svc = services(request)
    synthesis, reference = await prepare_clone(svc, params, audio)
    opening = open_stream(svc, synthesis, "wav", target_rate=None, timeout=timeout)
    rate, body = await unless_disconnected(request, opening)
    headers = {"X-Sample-Rate": str(rate), "X-Reference-Id": reference.reference_id}
    return StreamingResponse(body, media_type="audio/wav", headers=headers)
