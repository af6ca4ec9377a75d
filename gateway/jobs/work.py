"""Render one job segment: its voice (segment voice → speaker reference → job voice), its knobs (job's,
then the segment's), its duration goal, as batch work in the pool."""

from __future__ import annotations

import anyio

from gateway.errors import InvalidInput
from gateway.jobs.model import Job, Segment
from gateway.services.context import Services
from gateway.services.params import EngineKnobs
from gateway.services.render import DurationGoal, render
from gateway.services.synthesis import ResolvedReference, build_request, resolve_reference, resolve_weights


async def _reference(services: Services, job: Job, segment: Segment) -> ResolvedReference:
    speaker = job.speakers.get(segment.speaker) if segment.speaker else None
    voice_id = segment.voice_id or (speaker.voice_id if speaker else None)
    if voice_id is None and speaker is not None and speaker.reference_id:
        path = services.settings.refs_dir / f"{speaker.reference_id}.wav"
        return ResolvedReference(
            engine_path=services.settings.to_engine_path(path),
            reference_id=speaker.reference_id,
            prompt_text=speaker.prompt_text,
            prompt_language=speaker.prompt_language,
        )
    voice_id = voice_id or job.voice_id
    if voice_id is None:
        raise InvalidInput(f"segment {segment.id} has no voice", code="missing_reference")
    voice = await anyio.to_thread.run_sync(services.voices.get, voice_id)
    return await resolve_reference(services, audio=None, voice=voice, prompt_text="", prompt_language=None)


async def render_segment(services: Services, job: Job, segment: Segment) -> bytes:
    """Fill in the segment's outcome and return its WAV (the job manager stores it)."""
    segment.attempts += 1
    reference = await _reference(services, job, segment)
    knobs = EngineKnobs.model_validate({**job.knobs, **({"seed": job.seed} if job.seed is not None else {}),
                                        **segment.knobs})
    request = build_request(
        services, text=segment.text, text_language=segment.language, reference=reference, knobs=knobs,
        weights=resolve_weights(services, knobs.model),
    )
    goal = (
        DurationGoal(segment.target_duration, job.duration_tolerance, job.max_stretch)
        if segment.target_duration
        else None
    )
    rendered = await render(
        services, request, reference_id=reference.reference_id, goal=goal, timeout=None, priority="batch"
    )
    segment.engine = rendered.engine.id if rendered.engine else None  # the id, never the URL
    segment.sample_rate = rendered.sample_rate
    segment.duration = round(rendered.duration, 4)
    segment.timing = rendered.timing
    segment.cached = rendered.cached
    segment.reference_id = reference.reference_id
    segment.voice_id = reference.voice_id
    segment.queue_wait = round(rendered.queue_wait, 4)
    segment.engine_seconds = round(rendered.engine_seconds, 4)
    return rendered.wav
