"""`POST /v1/voice-clone`: reference + text in, base64 WAV with timing metadata out."""

from __future__ import annotations

import json
import time
from typing import Any

import pybase64
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.context import request_arrived, request_timeout, services, unless_disconnected
from gateway.api.params import CloneParams, openapi_body, parse_params
from gateway.api.uploads import is_json, read_json, read_multipart
from gateway.auth import spends_audio
from gateway.engine.types import SynthesisRequest
from gateway.errors import InvalidInput
from gateway.logs import request_facts
from gateway.services.context import Services
from gateway.services.quality import QualityOptions, encoder_for
from gateway.services.render import DurationGoal
from gateway.services.streaming import EngineAudioResponse, open_stream, stream_deadline
from gateway.services.synthesis import (
    CloneOutcome,
    ResolvedReference,
    duration_goal,
    prepare_clone,
    synthesize_clone,
)

router = APIRouter()

_AUDIO_PLACEHOLDER = "\x00audio\x00"


def _json_with_audio(meta: dict[str, Any], audio_b64: bytes) -> bytes:
    """Splice the (JSON-safe) base64 into the serialised metadata instead of re-escaping ~MBs (DESIGN §8)."""
    head, tail = json.dumps({**meta, "output_audio_base64": _AUDIO_PLACEHOLDER}).split(
        json.dumps(_AUDIO_PLACEHOLDER)
    )
    return b"".join((head.encode(), b'"', audio_b64, b'"', tail.encode()))


def _shape(outcome: CloneOutcome, request_id: str, text_length: int, encode_seconds: float) -> dict[str, Any]:
    result, ref = outcome.result, outcome.reference
    engine_seconds = result.engine_seconds
    engine = result.engine  # None when the clip came from the result cache
    return {
        "task": "voice_clone",  # the seed's value (seed 002): its clients may check it
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
        "rtf": round(engine_seconds / result.duration, 4) if result.duration and engine else None,
        "engine": {"id": engine.id, "flavor": engine.flavor, "version": engine.version} if engine else None,
        "attempts": result.attempts,
        "reference_id": ref.reference_id,
        "voice_id": ref.voice_id,
        "text_language": outcome.text_language,
        "warnings": [*ref.warnings, *result.warnings],
        "cached": result.cached,
        "duration_target": result.timing,
        "quality": result.quality,
    }


def quality_headers(quality: dict[str, Any] | None) -> dict[str, str]:
    """`X-Quality-*` of a whole clip (none for a cache entry stored before quality checks existed)."""
    if quality is None:
        return {}
    headers = {
        "X-Quality-Ok": "true" if quality["ok"] else "false",
        "X-Quality-Problems": ",".join(quality["problems"]) or "none",
        "X-Quality-Attempts": str(len(quality.get("attempts") or [None])),
    }
    if quality.get("similarity") is not None:
        headers["X-Quality-Similarity"] = f"{quality['similarity']:.4f}"
    return headers


@router.post(
    "/v1/voice-clone",
    summary="Clone a voice: reference audio + text → base64 WAV with timing metadata",
    dependencies=[spends_audio],
    responses={200: {"description": "JSON with output_audio_base64 and metadata"}},
    openapi_extra=openapi_body(CloneParams, files={
        "audio": "the reference recording (wav, flac, ogg, mp3)",
        "aux_audio": "an extra reference of the same voice (repeatable; api_v2 engines fuse the timbre)",
    }),
)
async def voice_clone(request: Request) -> Response:
    svc = services(request)
    timeout = request_timeout(request)
    started = time.perf_counter()
    params, synthesis, reference, goal = await _prepare(request, svc)
    facts = request_facts(request)
    facts.voice_id = reference.voice_id
    if params.stream:
        deadline = stream_deadline(svc, timeout, request_arrived(request))
        opened = await unless_disconnected(
            request, open_stream(svc, synthesis, "wav", target_rate=None, deadline=deadline)
        )
        opened.report_to(facts)
        headers = {"X-Sample-Rate": str(opened.rate), "X-Reference-Id": reference.reference_id}
        return EngineAudioResponse(opened, media_type="audio/wav", headers=headers, deadline=deadline)
    options = QualityOptions(params.quality_retries, params.min_similarity, reference.local_path)
    outcome = await unless_disconnected(
        request, synthesize_clone(svc, synthesis, reference, started, timeout, goal, options)
    )
    encode_started = time.perf_counter()
    # SIMD base64 runs at ~30 GB/s: even a long clip takes well under a worker-thread round trip (DESIGN §8)
    audio_b64 = pybase64.b64encode(outcome.result.wav)
    encode_seconds = time.perf_counter() - encode_started
    facts.note_rendered(outcome.result, encode_seconds)
    meta = _shape(outcome, request.state.request_id, len(params.text), encode_seconds)
    headers = {"X-Cache": outcome.result.cache_status, **quality_headers(outcome.result.quality)}
    return Response(_json_with_audio(meta, audio_b64), media_type="application/json", headers=headers)


async def _prepare(
    request: Request, svc: Services
) -> tuple[CloneParams, SynthesisRequest, ResolvedReference, DurationGoal | None]:
    """Read the body and take in the reference. The raw upload dies with this frame, so it is not held in
    memory while the request waits in the queue (it is in the shared dir by then)."""
    limit, max_aux = svc.settings.max_upload_bytes, svc.settings.max_aux_references
    audio: bytes | None = None
    aux_audio: list[bytes] = []
    if is_json(request):
        # base64 inflates by 4/3; allow for it plus the other fields (in JSON, every reference together:
        # a body of several uploads' size would sit in memory whole while it is parsed)
        params = parse_params(CloneParams, await read_json(request, max_bytes=limit * 4 // 3 + 1_000_000))
    else:
        form = await read_multipart(request, max_file_bytes=limit, file_fields=frozenset({"audio"}),
                                    repeatable=frozenset({"aux_audio"}), max_repeats=max_aux)
        params = parse_params(CloneParams, dict(form.fields))
        audio = form.files["audio"].data if "audio" in form.files else None
        aux_audio = [upload.data for upload in form.repeated.get("aux_audio", [])]
    if params.reference_audio_base64 and params.voice_clone_audio:
        raise InvalidInput("send the reference once: 'voice_clone_audio' is another name for "
                           "'reference_audio_base64'", code="conflicting_reference")
    # the base64 text goes to intake only: `params` outlives this frame and must not hold it through the queue
    audio_base64 = params.reference_audio_base64 or params.voice_clone_audio
    aux_base64 = params.aux_audio_base64
    params = params.model_copy(
        update={"reference_audio_base64": None, "voice_clone_audio": None, "aux_audio_base64": None}
    )
    if params.stream and (params.quality_retries or params.min_similarity is not None):
        raise InvalidInput("quality_retries and min_similarity need the whole clip; send stream=false",
                           code="quality_needs_whole_clip")
    await encoder_for(svc, QualityOptions(min_similarity=params.min_similarity))  # 501 before any reference work
    goal = duration_goal(params, stream=params.stream, speed=params.speed)  # before any reference work
    synthesis, reference = await prepare_clone(svc, params, audio, audio_base64, aux_audio, aux_base64)
    return params, synthesis, reference, goal
