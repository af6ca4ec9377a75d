"""The synthesis use cases: resolve the reference (upload, voice, default), validate, call the pool."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.api.params import CloneParams, EngineKnobs
from gateway.engine.types import SynthesisRequest, SynthesisResult
from gateway.errors import InvalidInput
from gateway.languages import V2_LANGUAGES, normalize_language
from gateway.services.context import Services
from gateway.services.references import intake_reference
from gateway.settings import ModelWeights


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


@dataclass
class CloneOutcome:
    result: SynthesisResult
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


def check_text(services: Services, text: str) -> str:
    if not text.strip():
        raise InvalidInput("text is empty", code="empty_text")
    limit = services.settings.max_text_chars
    if len(text) > limit:
        raise InvalidInput(
            f"text is {len(text)} characters; the limit is {limit}", code="text_too_long", limit=limit
        )
    return text


def resolve_weights(services: Services, name: str | None) -> ModelWeights | None:
    if name is None:
        return None
    models = services.settings.models
    if name not in models:
        known = ", ".join(sorted(models)) or "none are configured"
        raise InvalidInput(f"model '{name}' is not configured; known models: {known}", code="unknown_model")
    return models[name]


async def resolve_reference(
    services: Services,
    *,
    audio: bytes | None,
    voice_id: str | None,
    prompt_text: str,
    prompt_language: str | None,
    trim: bool = False,
) -> ResolvedReference:
    """An uploaded reference wins, then a named voice, then the library's default voice."""
    started = time.perf_counter()
    settings = services.settings
    if audio is not None:
        ref, path = await intake_reference(audio, settings, services.metrics, trim_to_max=trim)
        return ResolvedReference(
            engine_path=settings.to_engine_path(path),
            reference_id=ref.sha256,
            prompt_text=prompt_text,
            prompt_language=prompt_language,
            warnings=list(ref.warnings),
            prep_seconds=time.perf_counter() - started,
        )
    voice = services.voices.resolve(voice_id) if voice_id else services.voices.default()
    if voice is None:
        raise InvalidInput(
            "no reference: upload 'audio' (or 'reference_audio_base64'), name a 'voice_id', "
            "or set a default voice",
            code="missing_reference",
        )
    return ResolvedReference(
        engine_path=settings.to_engine_path(services.voices.reference_path(voice)),
        reference_id=voice.reference_sha256,
        prompt_text=prompt_text or voice.prompt_text,
        prompt_language=prompt_language or voice.prompt_language,
        weights=voice.weights,
        voice_id=voice.id,
        prep_seconds=time.perf_counter() - started,
    )


def build_request(
    services: Services,
    *,
    text: str,
    text_language: str,
    reference: ResolvedReference,
    knobs: EngineKnobs,
    streaming: bool = False,
) -> SynthesisRequest:
    """Map validated client fields onto the engine-agnostic request."""
    text_code = check_language(services, text_language, "text_language")
    prompt_code = check_language(services, reference.prompt_language or text_language, "prompt_language")
    return SynthesisRequest(
        text=check_text(services, text),
        text_language=text_code,
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
        weights=resolve_weights(services, knobs.model) or reference.weights,
        streaming=streaming,
    )


async def prepare_clone(
    services: Services, params: CloneParams, audio: bytes | None
) -> tuple[SynthesisRequest, ResolvedReference]:
    """Validate, take in the reference and build the engine request (shared by JSON and streaming answers)."""
    check_text(services, params.text)  # fail fast, before any reference work
    check_language(services, params.text_language, "text_language")
    reference = await resolve_reference(
        services,
        audio=audio,
        voice_id=params.voice_id,
        prompt_text=params.prompt_text,
        prompt_language=params.prompt_language,
        trim=params.trim_reference,
    )
    request = build_request(
        services,
        text=params.text,
        text_language=params.text_language,
        reference=reference,
        knobs=params,
        streaming=params.stream,
    )
    return request, reference


async def clone(
    services: Services, params: CloneParams, audio: bytes | None, *, timeout: float | None
) -> CloneOutcome:
    """`POST /v1/voice-clone`: reference intake, then one pooled engine call."""
    started = time.perf_counter()
    request, reference = await prepare_clone(services, params, audio)
    result = await services.pool.synthesize(request, timeout=timeout)
    services.metrics.audio_seconds.inc(result.duration)
    return CloneOutcome(result, reference, request.text_language, time.perf_counter() - started)
