"""The synthesis use cases: resolve the reference (upload, voice, default), validate, call the pool."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from gateway.auth.access import charge_audio
from gateway.engine.types import SynthesisRequest
from gateway.errors import InvalidInput
from gateway.languages import V2_LANGUAGES, normalize_language
from gateway.services.context import Services
from gateway.services.params import CloneParams, DurationFields, EngineKnobs
from gateway.services.quality import QualityOptions
from gateway.services.references import (
    INLINE_BASE64_CHARS,
    decode_base64_reference,
    naming_aux,
    take_in_aux_references,
    take_in_reference,
)
from gateway.services.render import DurationGoal, Rendered, render
from gateway.settings import ModelWeights
from gateway.voices.store import Voice


@dataclass
class ResolvedReference:
    """Which reference a request speaks with, as the engine will see it."""

    engine_path: str
    reference_id: str
    prompt_text: str
    prompt_language: str | None
    weights: ModelWeights | None = None
    voice_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    prep_seconds: float = 0.0
    #: the main reference on the gateway's side (speaker similarity embeds it)
    local_path: Path | None = None
    #: extra references (the voice's, then the request's), engine-side paths
    aux_engine_paths: tuple[str, ...] = ()


@dataclass
class CloneOutcome:
    result: Rendered
    reference: ResolvedReference
    text_language: str
    total_seconds: float


def check_language(services: Services, value: str, field_name: str) -> str:
    """Normalise a language code and check it against the engines' table (422 with the allowed list)."""
    code = normalize_language(value)
    allowed = services.pool.supported_languages() or frozenset(V2_LANGUAGES)
    if code not in allowed:
        raise InvalidInput(
            f"{field_name} '{value}' is not supported by the engines; use one of: {', '.join(sorted(allowed))}",
            code="unsupported_language",
            field=field_name,
            supported=sorted(allowed),
        )
    return code


def check_named_languages(services: Services, **fields: str | None) -> None:
    """Check the languages a client named before any reference work, so a refusal decodes and stores nothing
    (a language left unnamed comes from the voice later and is checked then)."""
    for field_name, value in fields.items():
        if value is not None:
            check_language(services, value, field_name)


#: C0 controls but tab, LF, CR; DEL; C1 controls (what check_text refuses).
_UNSPEAKABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_text(services: Services, text: str) -> str:
    """Refuse up front text with nothing to speak (the engine would answer its silence placeholder) and
    text no engine can speak: control characters other than tab and line breaks (a NUL makes api_v2
    answer 400 "embedded null character"; lone surrogates never get this far: the body parsers refuse them)."""
    if (bad := _UNSPEAKABLE.search(text)) is not None:
        character = f"U+{ord(bad.group()):04X}"
        raise InvalidInput(
            f"text contains {character} at position {bad.start()}, a control character no engine can speak; "
            "remove it (tab and line breaks are fine)",
            code="invalid_text",
            character=character,
            position=bad.start(),
        )
    if not any(ch.isalnum() for ch in text):
        raise InvalidInput("text has nothing to speak (it is empty or only punctuation)", code="empty_text")
    limit = services.settings.max_text_chars
    if len(text) > limit:
        raise InvalidInput(
            f"text is {len(text)} characters; the limit is {limit}", code="text_too_long", limit=limit
        )
    return text


def duration_goal(fields: DurationFields, *, stream: bool, speed: float | None) -> DurationGoal | None:
    """The duration goal a request asks for, if any; refused with a stream (a stream cannot be stretched
    once sent) and with a client speed (the target chooses the speed)."""
    if fields.target_duration is None:
        return None
    if stream:
        raise InvalidInput(
            "target_duration needs the whole clip to fit it; send stream=false", code="duration_needs_whole_clip"
        )
    if speed is not None:
        raise InvalidInput(
            "send either 'speed' or 'target_duration': the target chooses the speed", code="conflicting_speed"
        )
    return DurationGoal(fields.target_duration, fields.duration_tolerance, fields.max_stretch)


def resolve_weights(services: Services, name: str | None) -> ModelWeights | None:
    if name is None:
        return None
    models = services.settings.models
    if name not in models:
        known = ", ".join(sorted(models)) or "none are configured"
        raise InvalidInput(f"model '{name}' is not configured; known models: {known}", code="unknown_model")
    return models[name]


async def find_voice(services: Services, id_or_name: str | None) -> Voice | None:
    """A named voice (404 when unknown), else the library's default voice (None when unset); off the loop."""
    store = services.voices
    if id_or_name:
        return await anyio.to_thread.run_sync(store.resolve, id_or_name)
    return await anyio.to_thread.run_sync(store.default)


async def resolve_reference(
    services: Services,
    *,
    audio: bytes | None,
    voice: Voice | None,
    prompt_text: str,
    prompt_language: str | None,
    trim: bool = False,
    how_to_send: str = "upload a reference recording or name a voice",
    aux_audio: list[bytes] | None = None,
) -> ResolvedReference:
    """An uploaded reference, else the given voice (callers pass the default voice when none was named).
    `aux_audio`: the request's extra references, added to the voice's own (at most max_aux_references)."""
    started = time.perf_counter()
    settings = services.settings
    voice_aux = services.voices.aux_reference_paths(voice) if audio is None and voice is not None else []
    if len(voice_aux) + len(aux_audio or []) > settings.max_aux_references:
        raise InvalidInput(
            f"at most {settings.max_aux_references} extra references (aux_audio) are allowed, the voice's "
            f"{len(voice_aux)} included",
            code="too_many_files", field="aux_audio",
        )
    aux = await take_in_aux_references(services, aux_audio or [], trim_to_max=trim)
    aux_paths = tuple(settings.to_engine_path(path) for path in [*voice_aux, *(ref.path for ref in aux)])
    if audio is not None:
        ref = await take_in_reference(services, audio, trim_to_max=trim)
        return ResolvedReference(
            engine_path=settings.to_engine_path(ref.path),
            reference_id=ref.sha256,
            prompt_text=prompt_text,
            prompt_language=prompt_language,
            warnings=list(ref.warnings),
            prep_seconds=time.perf_counter() - started,
            local_path=Path(ref.path),
            aux_engine_paths=aux_paths,
        )
    if voice is None:
        raise InvalidInput(
            f"no reference: {how_to_send}, or set a default voice (PUT /v1/voices/default)",
            code="missing_reference",
        )
    local = services.voices.reference_path(voice)
    return ResolvedReference(
        engine_path=settings.to_engine_path(local),
        reference_id=voice.reference_sha256,
        prompt_text=prompt_text or voice.prompt_text,
        prompt_language=prompt_language or voice.prompt_language,
        weights=voice.weights,
        voice_id=voice.id,
        prep_seconds=time.perf_counter() - started,
        local_path=local,
        aux_engine_paths=aux_paths,
    )


def build_request(
    services: Services,
    *,
    text: str,
    text_language: str,
    reference: ResolvedReference,
    knobs: EngineKnobs,
    weights: ModelWeights | None,
) -> SynthesisRequest:
    """Map client fields onto the engine-agnostic request; `text`, `text_language` and `weights` (the request's
    own model, resolved before any reference work; None → the reference's) are already checked."""
    prompt_code = check_language(services, reference.prompt_language or text_language, "prompt_language")
    return SynthesisRequest(
        text=text,
        text_language=text_language,
        reference_path=reference.engine_path,
        prompt_text=reference.prompt_text,
        prompt_language=prompt_code,
        cut_punc=knobs.cut_punc,
        text_split_method=knobs.text_split_method,
        top_k=knobs.top_k,
        top_p=knobs.top_p,
        temperature=knobs.temperature,
        speed=knobs.speed,
        seed=knobs.seed,
        batch_size=knobs.batch_size,
        repetition_penalty=knobs.repetition_penalty,
        fragment_interval=knobs.fragment_interval,
        sample_steps=knobs.sample_steps,
        aux_reference_paths=reference.aux_engine_paths,
        weights=weights or reference.weights,
    )


async def prepare_clone(
    services: Services, params: CloneParams, audio: bytes | None, audio_base64: str | None = None,
    aux_audio: list[bytes] | None = None, aux_base64: list[str] | None = None,
) -> tuple[SynthesisRequest, ResolvedReference]:
    """Validate, take in the reference and build the engine request (shared by JSON and streaming answers).

    `audio` is an uploaded recording, `audio_base64` the `reference_audio_base64` field (decoded here, after
    the cheap checks, so a request that would be refused anyway costs no decoding or storing); `aux_audio`
    and `aux_base64` the extra references, uploaded or base64."""
    if audio is not None and audio_base64:
        raise InvalidInput("send the reference once, as audio or as base64", code="conflicting_reference")
    has_audio = audio is not None or bool(audio_base64)
    if has_audio and params.voice_id:
        raise InvalidInput("send either a reference recording or 'voice_id', not both", code="conflicting_reference")
    # fail fast, before any reference work
    text = check_text(services, params.text)
    text_language = check_language(services, params.text_language, "text_language")
    check_named_languages(services, prompt_language=params.prompt_language)
    weights = resolve_weights(services, params.model)
    if audio_base64:
        limit = services.settings.max_upload_bytes
        if len(audio_base64) <= INLINE_BASE64_CHARS:
            audio = decode_base64_reference(audio_base64, limit)
        else:
            audio = await anyio.to_thread.run_sync(decode_base64_reference, audio_base64, limit)
    limit = services.settings.max_upload_bytes
    extra = list(aux_audio or [])
    if len(extra) + len(aux_base64 or []) > services.settings.max_aux_references:  # before decoding any
        raise InvalidInput(f"at most {services.settings.max_aux_references} extra references (aux_audio) are "
                           "allowed", code="too_many_files", field="aux_audio")
    for index, value in enumerate(aux_base64 or []):
        with naming_aux(index):
            decode = functools.partial(decode_base64_reference, value, limit, field="aux_audio_base64")
            extra.append(await anyio.to_thread.run_sync(decode))
    voice = None if audio is not None else await find_voice(services, params.voice_id)
    reference = await resolve_reference(
        services,
        audio=audio,
        voice=voice,
        prompt_text=params.prompt_text,
        prompt_language=params.prompt_language,
        trim=params.trim_reference,
        how_to_send="upload 'audio' (or 'reference_audio_base64') or name a 'voice_id'",
        aux_audio=extra,
    )
    request = build_request(
        services, text=text, text_language=text_language, reference=reference, knobs=params, weights=weights
    )
    return request, reference


async def synthesize_clone(
    services: Services,
    request: SynthesisRequest,
    reference: ResolvedReference,
    started: float,
    timeout: float | None,
    goal: DurationGoal | None = None,
    quality: QualityOptions = QualityOptions(),  # noqa: B008 - frozen
) -> CloneOutcome:
    """`POST /v1/voice-clone` after intake: one render (result cache, pooled engine call, quality checks,
    duration goal)."""
    result = await render(
        services, request, reference_id=reference.reference_id, goal=goal, timeout=timeout, quality=quality
    )
    services.metrics.audio_seconds.inc(result.duration)
    await charge_audio(result.duration)
    return CloneOutcome(result, reference, request.text_language, time.perf_counter() - started)
