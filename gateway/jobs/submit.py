"""A job request → a Job ready to run: lines from segments or subtitles, every voice resolved, speaker
references cut from the source track and taken in like any upload. Everything a client got wrong is a 4xx
here, before anything runs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import anyio

from gateway.audio.intake import decode_audio
from gateway.audio.wav import pcm16_wav
from gateway.errors import GatewayError, InvalidInput
from gateway.jobs.model import Job, JobRequest, Segment, SegmentRequest, SpeakerReference
from gateway.jobs.speakers import SpeakerLine, speaker_references
from gateway.jobs.subtitles import parse_subtitles
from gateway.services.context import Services
from gateway.services.references import decode_base64_reference, take_in_reference
from gateway.services.synthesis import check_language, check_text, find_voice, resolve_weights

#: Longest source track decoded (float32 mono in memory: 30 min at 48 kHz is ~350 MB).
MAX_SOURCE_SECONDS = 1800.0
#: Seconds over the reference minimum asked of a cut, so what intake's silence trim takes leaves enough.
_TRIM_MARGIN = 0.3


@dataclass
class JobFiles:
    """Files sent with a job (multipart file fields, or the JSON body's base64 fields decoded)."""

    subtitles: str | None = None
    source_subtitles: str | None = None
    source_audio: bytes | None = None
    speaker_audio: dict[str, bytes] = field(default_factory=dict)


def _lines(request: JobRequest, files: JobFiles) -> list[SegmentRequest]:
    if files.subtitles is None:
        if files.source_subtitles is not None:
            raise InvalidInput("source_subtitles go with 'subtitles'", code="invalid_subtitles")
        return request.segments
    cues = parse_subtitles(files.subtitles, format=request.subtitles_format)
    originals: list[str | None] = [cue.source_text for cue in cues]
    if files.source_subtitles is not None:
        source_cues = parse_subtitles(files.source_subtitles, format=request.subtitles_format)
        if len(source_cues) != len(cues):
            raise InvalidInput(
                f"source_subtitles have {len(source_cues)} cues and subtitles {len(cues)}; they must match cue "
                "for cue (the original line and its translation)",
                code="invalid_subtitles",
            )
        originals = [cue.text for cue in source_cues]
    return [
        SegmentRequest(id=cue.id, text=cue.text, start=cue.start, end=cue.end, speaker=cue.speaker,
                       source_text=original)
        for cue, original in zip(cues, originals, strict=True)
    ]


async def _voice_id(services: Services, name: str, where: str) -> str:
    try:
        voice = await find_voice(services, name)
    except GatewayError as err:
        raise InvalidInput(f"{where}: {err.message}", code="unknown_voice", voice=name) from err
    assert voice is not None  # a named voice is found or refused
    return voice.id


async def _segments(services: Services, request: JobRequest, lines: list[SegmentRequest]) -> list[Segment]:
    segments: list[Segment] = []
    seen: set[str] = set()
    for index, line in enumerate(lines):
        segment_id = line.id or str(index + 1)
        where = f"segment {segment_id}"
        if segment_id in seen:
            raise InvalidInput(f"{where}: the id is used twice", code="duplicate_segment_id")
        seen.add(segment_id)
        try:
            text = check_text(services, line.text)
            language = check_language(services, line.language or request.language, "language")
        except InvalidInput as err:
            raise InvalidInput(f"{where}: {err.message}", code=err.code, segment=segment_id) from err
        target = line.target_duration
        if target is None and request.fit_to_slots and line.start is not None and line.end is not None:
            target = line.end - line.start
        segments.append(
            Segment(
                id=segment_id, index=index, text=text, language=language, start=line.start, end=line.end,
                speaker=line.speaker, voice=line.voice, target_duration=target,
                knobs=line.knobs.model_dump(exclude_none=True) if line.knobs else {},
                source_text=line.source_text,
                voice_id=await _voice_id(services, line.voice, where) if line.voice else None,
            )
        )
    return segments


async def _take_in(services: Services, wav: bytes) -> tuple[str, list[str]]:
    stored = await take_in_reference(services, wav)
    return stored.sha256, list(stored.warnings)


async def _speakers(
    services: Services, request: JobRequest, files: JobFiles, segments: list[Segment], job: Job
) -> None:
    """Each speaker's reference: a named voice or an upload first, else cut from the source track."""
    names = {segment.speaker for segment in segments if segment.speaker}
    unknown = sorted(set(request.speakers) - names)
    if unknown:
        raise InvalidInput(f"speakers {unknown} have no lines in this job", code="unknown_speaker")
    prompt_default = request.source_language
    for name in sorted(names):
        given = request.speakers.get(name)
        upload = files.speaker_audio.get(name)
        if given and given.reference_audio_base64:
            upload = decode_base64_reference(given.reference_audio_base64, services.settings.max_upload_bytes)
        language = given.prompt_language if given and given.prompt_language else prompt_default
        if language is not None:
            check_language(services, language, f"speakers.{name}.prompt_language")
        if given and given.voice:
            voice_id = await _voice_id(services, given.voice, f"speaker {name}")
            job.speakers[name] = SpeakerReference(voice_id=voice_id, source="voice")
        elif upload is not None:
            sha, warnings = await _take_in(services, upload)
            job.speakers[name] = SpeakerReference(
                reference_id=sha, prompt_text=given.prompt_text if given else "", prompt_language=language,
                source="upload",
            )
            job.warnings.extend(f"speaker {name}: {warning}" for warning in warnings)
    if files.source_audio is not None:
        await _cut_from_source(services, files.source_audio, segments, job, prompt_default)


async def _cut_from_source(
    services: Services, source: bytes, segments: list[Segment], job: Job, language: str | None
) -> None:
    lines = [
        SpeakerLine(speaker=s.speaker, start=s.start, end=s.end, source_text=s.source_text)
        for s in segments
        if s.speaker and s.speaker not in job.speakers and s.source_text and s.start is not None and s.end is not None
    ]
    if not lines:
        job.warnings.append(
            "source_audio was sent, but no line without a voice has speaker, start, end and source_text"
        )
        return
    settings = services.settings

    def cut() -> dict[str, tuple[bytes, str, list[tuple[float, float]]]]:
        samples, rate = decode_audio(source, max_declared_seconds=MAX_SOURCE_SECONDS)
        # a margin over the minimum: intake trims the edges' silence before it checks the length
        references = speaker_references(
            samples, rate, lines, min_seconds=settings.min_reference_seconds + _TRIM_MARGIN,
            max_seconds=settings.max_reference_seconds,
        )
        return {
            name: (pcm16_wav(ref.samples, ref.rate), ref.prompt_text, ref.spans) for name, ref in references.items()
        }

    cuts = await anyio.to_thread.run_sync(cut, limiter=services.intake_limiter)
    for name, (wav, prompt_text, spans) in cuts.items():
        try:
            sha, warnings = await _take_in(services, wav)
        except GatewayError as err:  # e.g. less than min_reference_seconds of their speech in the source
            job.speakers[name] = SpeakerReference(source="source_audio", spans=spans, error=err.message)
            job.warnings.append(f"speaker {name}: no reference from the source track: {err.message}")
            continue
        job.speakers[name] = SpeakerReference(
            reference_id=sha, prompt_text=prompt_text, prompt_language=language, source="source_audio", spans=spans
        )
        job.warnings.extend(f"speaker {name}: {warning}" for warning in warnings)


def _check_every_line_has_a_voice(job: Job) -> None:
    usable = {name for name, ref in job.speakers.items() if ref.reference_id or ref.voice_id}
    orphans = [s.id for s in job.segments if not s.voice_id and s.speaker not in usable]
    if orphans and not job.voice_id:
        shown = ", ".join(orphans[:10]) + (" ..." if len(orphans) > 10 else "")
        raise InvalidInput(
            f"segments {shown} have no voice: name a 'voice' per segment or for the job, give their speaker a "
            "reference ('speakers' or a source track with source_text), or set a default voice",
            code="missing_reference",
            segments=orphans[:100],
        )


async def build_job(
    services: Services, request: JobRequest, files: JobFiles, *, request_sha256: str, idempotency_key: str | None
) -> Job:
    resolve_weights(services, request.knobs.model if request.knobs else None)
    segments = await _segments(services, request, _lines(request, files))
    if not segments:
        raise InvalidInput("the job has no lines to speak", code="empty_job")
    if request.voice:
        default_id: str | None = await _voice_id(services, request.voice, "voice")
    else:  # the library's default voice, if one is set
        default_id = voice.id if (voice := await find_voice(services, None)) else None
    job = Job(
        id=uuid.uuid4().hex,
        idempotency_key=idempotency_key,
        request_sha256=request_sha256,
        voice_id=default_id,
        language=request.language,
        knobs=request.knobs.model_dump(exclude_none=True) if request.knobs else {},
        seed=request.seed,
        format=request.format,
        sample_rate=request.sample_rate,
        duration_tolerance=request.duration_tolerance,
        max_stretch=request.max_stretch,
        segments=segments,
    )
    await _speakers(services, request, files, segments, job)
    _check_every_line_has_a_voice(job)
    return job
