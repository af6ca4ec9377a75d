"""OpenAI-compatible speech: `POST /v1/audio/speech`, `GET /v1/audio/voices`, `GET /v1/models`.

The official OpenAI SDK sends `model`, `input`, `voice`, `response_format`, `speed` (and maybe `instructions`,
`stream_format`); it sends no language, so the text language defaults to the voice's prompt language, else `auto`.
Like OpenAI's API the answer streams by default, in every format; `"stream": false` returns the whole clip.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.api.context import request_arrived, request_timeout, services, unless_disconnected
from gateway.api.params import EngineKnobs, openapi_body, parse_params
from gateway.api.uploads import is_json, read_json, read_multipart
from gateway.api.voice_clone import quality_headers
from gateway.audio.convert import OUTPUT_FORMATS, encode
from gateway.audio.wav import wav_samples
from gateway.auth import charge_audio, spends_audio
from gateway.engine.types import SynthesisRequest
from gateway.errors import BadRequest, InvalidInput, NotFound
from gateway.logs import request_facts
from gateway.services.context import Services
from gateway.services.params import QualityFields
from gateway.services.quality import QualityOptions, encoder_for
from gateway.services.render import render
from gateway.services.streaming import EngineAudioResponse, open_stream, stream_deadline
from gateway.services.synthesis import (
    ResolvedReference,
    build_request,
    check_language,
    check_named_languages,
    check_text,
    resolve_reference,
)
from gateway.voices.store import Voice

router = APIRouter()

#: OpenAI's built-in voice names: clients such as Open WebUI send these by default; they map to the default voice.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar"}
)


class VoiceRef(BaseModel):
    """The SDK's custom-voice form: `voice={"id": "voice_..."}`."""

    id: str = Field(min_length=1, max_length=128)


class SpeechParams(QualityFields, EngineKnobs):
    """The OpenAI request plus our extras; `speed` follows OpenAI's 0.25–4 range (→ the engine's speed factor)."""

    model: str = "gpt-sovits"  # any value; a GATEWAY_MODELS name also selects those weights
    input: str = Field(min_length=1)
    voice: str | VoiceRef | None = None
    response_format: str = "mp3"
    stream: bool = True  # as OpenAI: audio flows as it is made; false → the whole clip with X-Audio-Duration
    stream_format: Literal["audio"] = "audio"
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    instructions: str | None = None  # accepted for SDK compatibility; GPT-SoVITS takes its style from the reference
    text_language: str | None = None
    prompt_text: str | None = Field(None, max_length=1000)
    prompt_language: str | None = None
    reference_text: str | None = Field(None, max_length=1000)  # izwi's name for prompt_text (multipart variant)


def _voice_for(svc: Services, voice: str | VoiceRef | None) -> Voice | None:
    """Resolve `voice` by id or name, else the default voice; OpenAI's stock names (`alloy`, ...) that match no
    saved voice also mean the default voice. Runs in a thread: it reads the library's files."""
    name = voice.id if isinstance(voice, VoiceRef) else voice
    if not name:
        return svc.voices.default()
    try:
        return svc.voices.resolve(name)
    except NotFound:
        default = svc.voices.default() if name.lower() in OPENAI_VOICES else None
        if default is not None:
            return default
        known = ", ".join(v.name for v in svc.voices.list()) or "none yet; create one with POST /v1/voices"
        raise NotFound(f"voice '{name[:64]}' does not exist; voices: {known}", code="voice_not_found") from None


def _check_format(params: SpeechParams) -> None:
    if params.response_format not in OUTPUT_FORMATS:
        raise BadRequest(
            f"response_format '{params.response_format[:32]}' is not supported for speech; "
            f"supported: {', '.join(OUTPUT_FORMATS)}",
            code="unsupported_format",
            supported=list(OUTPUT_FORMATS),
        )


async def _prepare(request: Request, svc: Services) -> tuple[SpeechParams, SynthesisRequest, ResolvedReference]:
    """Read the body, resolve the voice or take in the uploaded reference, build the engine request.
    The raw upload dies with this frame: it is not held in memory through the queue wait."""
    limit = svc.settings.max_upload_bytes
    audio: bytes | None = None
    aux_audio: list[bytes] = []
    if is_json(request):
        params = parse_params(SpeechParams, await read_json(request, max_bytes=1_000_000))
    else:
        form = await read_multipart(request, max_file_bytes=limit, file_fields=frozenset({"reference_audio"}),
                                    repeatable=frozenset({"aux_audio"}), max_repeats=svc.settings.max_aux_references)
        params = parse_params(SpeechParams, dict(form.fields))
        audio = form.files["reference_audio"].data if "reference_audio" in form.files else None
        aux_audio = [upload.data for upload in form.repeated.get("aux_audio", [])]
    _check_format(params)
    if params.stream and (params.quality_retries or params.min_similarity is not None):
        # a stream's headers leave before its audio exists: there is nothing to check or regenerate yet
        raise InvalidInput("quality_retries and min_similarity need the whole clip; send stream=false",
                           code="quality_needs_whole_clip")
    await encoder_for(svc, QualityOptions(min_similarity=params.min_similarity))  # 501 before any reference work
    text = check_text(svc, params.input)
    check_named_languages(svc, text_language=params.text_language, prompt_language=params.prompt_language)
    # an uploaded reference wins over `voice` (the SDK always sends a voice)
    voice = None if audio is not None else await anyio.to_thread.run_sync(_voice_for, svc, params.voice)
    reference = await resolve_reference(
        svc,
        audio=audio,
        voice=voice,
        prompt_text=params.prompt_text or params.reference_text or "",
        prompt_language=params.prompt_language,
        how_to_send="name a saved 'voice' or upload 'reference_audio'",
        aux_audio=aux_audio,
    )
    text_language = check_language(
        svc, params.text_language or reference.prompt_language or "auto", "text_language"
    )
    # any `model` is accepted (the SDK always sends one); a GATEWAY_MODELS name selects those weights
    synthesis = build_request(
        svc, text=text, text_language=text_language, reference=reference, knobs=params,
        weights=svc.settings.models.get(params.model),
    )
    return params, synthesis, reference


@router.post(
    "/v1/audio/speech",
    summary="OpenAI-compatible text to speech with a saved or uploaded voice",
    dependencies=[spends_audio],
    response_class=Response,
    responses={200: {"content": {t: {} for t in OUTPUT_FORMATS.values()}, "description": "audio bytes"}},
    openapi_extra=openapi_body(SpeechParams, files={
        "reference_audio": "a reference recording instead of `voice`",
        "aux_audio": "an extra reference of the same voice (repeatable; api_v2 engines fuse the timbre)",
    }),
)
async def speech(request: Request) -> Response:
    """Streaming answers carry no `X-Quality-*`: their headers leave before the audio exists, so nothing can
    be checked in time (the whole-clip answer, `stream: false`, is checked and may be regenerated)."""
    svc = services(request)
    timeout = request_timeout(request)
    params, synthesis, reference = await _prepare(request, svc)
    facts = request_facts(request)
    facts.voice_id = reference.voice_id
    fmt = params.response_format
    if params.stream:  # the length is not known up front: no X-Audio-Duration
        deadline = stream_deadline(svc, timeout, request_arrived(request))
        opened = await unless_disconnected(
            request, open_stream(svc, synthesis, fmt, target_rate=params.sample_rate, deadline=deadline)
        )
        opened.report_to(facts)
        headers = _audio_headers(opened.rate, reference)
        headers["X-Engine"] = opened.engine
        headers["X-Engine-Attempts"] = str(opened.attempts)
        return EngineAudioResponse(opened, media_type=OUTPUT_FORMATS[fmt], headers=headers, deadline=deadline)
    options = QualityOptions(params.quality_retries, params.min_similarity, reference.local_path)
    result = await unless_disconnected(
        request,
        render(svc, synthesis, reference_id=reference.reference_id, goal=None, timeout=timeout, quality=options),
    )
    svc.metrics.audio_seconds.inc(result.duration)
    await charge_audio(result.duration)
    encode_started = time.perf_counter()
    if fmt == "wav" and params.sample_rate in (None, result.sample_rate):
        data, rate = result.wav, result.sample_rate  # already a PCM16 WAV: no re-encode
    else:

        def convert() -> tuple[bytes, int]:
            samples, source_rate = wav_samples(result.wav)
            return encode(samples, source_rate, fmt, target_rate=params.sample_rate)

        data, rate = await anyio.to_thread.run_sync(convert)
    facts.note_rendered(result, time.perf_counter() - encode_started)
    headers = _audio_headers(rate, reference)
    headers["X-Audio-Duration"] = f"{result.duration:.3f}"
    headers["X-Cache"] = result.cache_status
    headers.update(quality_headers(result.quality))
    if result.engine is not None:  # None: from the result cache
        headers["X-Engine"] = result.engine.id
        headers["X-Engine-Attempts"] = str(result.attempts)
    return Response(data, media_type=OUTPUT_FORMATS[fmt], headers=headers)


def _audio_headers(rate: int, reference: ResolvedReference) -> dict[str, str]:
    headers = {"X-Sample-Rate": str(rate), "X-Reference-Id": reference.reference_id}
    if reference.voice_id:
        headers["X-Voice-Id"] = reference.voice_id
    return headers


@router.get("/v1/audio/voices", summary="Voices for OpenAI-style clients: {voices: [{id, name}]}")
async def audio_voices(request: Request) -> dict[str, list[dict[str, str]]]:
    voices = await anyio.to_thread.run_sync(services(request).voices.list)
    return {"voices": [{"id": v.id, "name": v.name} for v in voices]}


@router.get("/v1/models", summary="Models that can be asked for in `model`")
async def models(request: Request) -> dict[str, Any]:
    names = ["gpt-sovits", *sorted(services(request).settings.models)]
    return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "sovits-gateway"} for n in names]}

