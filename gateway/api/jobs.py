"""Dubbing jobs: `POST /v1/jobs` (202), progress, retry, cancel, segment audio, the track, and SSE events."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from gateway.api.context import services
from gateway.api.params import openapi_body, parse_params
from gateway.api.uploads import is_json, parse_json, read_json, read_multipart
from gateway.audio.convert import OUTPUT_FORMATS
from gateway.auth import require_admin, spends_audio
from gateway.errors import BadRequest, Conflict, InvalidInput, NotFound
from gateway.jobs.model import FINISHED, JobRequest
from gateway.jobs.output import job_summary, job_track_file, job_view, segment_audio
from gateway.jobs.runner import JobManager
from gateway.jobs.submit import JobFiles, build_job
from gateway.logs import request_facts
from gateway.services.context import Services
from gateway.services.references import decode_base64_reference

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_FILES = frozenset({"job", "subtitles", "source_subtitles", "source_audio", "speaker.*"})
_TRACK_FORMATS = ("wav", "flac", "mp3")
#: SSE comment sent when nothing changed for this long, so proxies keep the stream open.
_KEEPALIVE_SECONDS = 15.0
#: How often a stream re-reads the file of a job another replica runs.
_POLL_SECONDS = 0.5


def _jobs(svc: Services) -> JobManager:
    assert svc.jobs is not None
    return svc.jobs


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 text", code="invalid_subtitles") from exc


async def _read_request(request: Request, svc: Services) -> tuple[JobRequest, JobFiles, str]:
    """The job request, its files, and a digest of both that does not depend on multipart framing."""
    limit = svc.settings.job_max_upload_bytes
    files = JobFiles()
    digest = hashlib.sha256()
    if is_json(request):
        fields: dict[str, Any] = await read_json(request, max_bytes=limit)
    else:
        form = await read_multipart(request, max_file_bytes=limit, file_fields=_FILES)
        fields = dict(form.fields)
        raw_job = form.files["job"].data if "job" in form.files else fields.pop("job", None)
        if raw_job is not None:
            job = parse_json(raw_job, "the 'job' field")
            if not isinstance(job, dict):
                raise InvalidInput("the 'job' field is not a JSON object", code="invalid_request")
            fields = {**job, **fields}
        for name in ("segments", "speakers", "knobs"):  # (max_stretch parses "low,high" itself)
            if isinstance(fields.get(name), str):  # a plain form field carrying JSON
                fields[name] = parse_json(fields[name], f"field '{name}'")
        for name, upload in sorted(form.files.items()):
            digest.update(f"{name}:{hashlib.sha256(upload.data).hexdigest()};".encode())
            if name in ("subtitles", "source_subtitles"):
                fields[name] = _text(upload.data, f"the {name} file")
            elif name == "source_audio":
                files.source_audio = upload.data
            elif name.startswith("speaker."):
                files.speaker_audio[name.removeprefix("speaker.")] = upload.data
    job_request = parse_params(JobRequest, fields)
    digest.update(job_request.model_dump_json().encode())
    files.subtitles, files.source_subtitles = job_request.subtitles, job_request.source_subtitles
    if job_request.source_audio_base64:
        files.source_audio = decode_base64_reference(job_request.source_audio_base64, limit)
    return job_request, files, digest.hexdigest()


@router.post(
    "",
    status_code=202,
    dependencies=[spends_audio],
    summary="Submit a dubbing job (segments or a subtitle file; optional source track and speaker references)",
    openapi_extra=openapi_body(
        JobRequest,
        files={
            "job": "the job as a JSON file (instead of form fields)",
            "subtitles": "an SRT, WebVTT or ASS file",
            "source_subtitles": "the original-language subtitles, cue for cue (their text is each line's source_text)",
            "source_audio": "the original recording (speaker references are cut from it)",
            "speaker.NAME": "a reference recording for speaker NAME",
        },
    ),
)
async def submit_job(request: Request) -> JSONResponse:
    svc = services(request)
    manager = _jobs(svc)
    job_request, files, request_sha256 = await _read_request(request, svc)
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise BadRequest("Idempotency-Key must be 1-255 characters", code="invalid_idempotency_key")
    if key and (earlier := await manager.by_idempotency_key(key, request_sha256)) is not None:
        headers = {"Location": f"/v1/jobs/{earlier.id}", "Idempotent-Replayed": "true"}
        return JSONResponse(job_summary(earlier, _base_url(request)), status_code=202, headers=headers)
    job = await build_job(svc, job_request, files, request_sha256=request_sha256, idempotency_key=key)
    request_facts(request).voice_id = job.voice_id
    if key and (earlier := await manager.by_idempotency_key(key, request_sha256)) is not None:
        job = earlier  # the same request arrived twice at once: the first one to finish intake wins
    else:
        job = await manager.submit(job)  # (another replica's twin may have won meanwhile)
    return JSONResponse(
        job_summary(job, _base_url(request)), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


@router.get("", summary="List jobs (newest first)")
async def list_jobs(request: Request) -> dict[str, list[dict[str, Any]]]:
    manager = _jobs(services(request))
    jobs = sorted(await manager.all(), key=lambda job: job.created_at, reverse=True)
    return {"jobs": [job_summary(job, _base_url(request)) for job in jobs]}


@router.get("/{job_id}", summary="A job: status, progress, per-segment details and URLs, overlaps")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return job_view(await _jobs(services(request)).get(job_id), _base_url(request))


@router.post("/{job_id}/retry", status_code=202, summary="Run the failed segments again (done ones are kept)",
             dependencies=[spends_audio])
async def retry_job(request: Request, job_id: str) -> dict[str, Any]:
    job = await _jobs(services(request)).retry(job_id)
    return job_view(job, _base_url(request))


@router.delete(
    "/{job_id}",
    summary="Cancel an unfinished job (200 with the job); delete a finished one and its audio (204)",
    responses={204: {"description": "the finished job was deleted"}},
    dependencies=[require_admin],
)
async def delete_job(request: Request, job_id: str) -> Response:
    manager = _jobs(services(request))
    job = await manager.get(job_id)
    if job.status in FINISHED:
        await manager.delete(job_id)
        return Response(status_code=204)
    job = await manager.cancel(job_id)
    return JSONResponse(job_view(job, _base_url(request)))


def _audio_format(fmt: str, allowed: tuple[str, ...]) -> str:
    if fmt not in allowed:
        raise BadRequest(f"unsupported format {fmt!r}; use one of: {', '.join(allowed)}", code="unsupported_format")
    return fmt


@router.get("/{job_id}/segments/{segment_id}", summary="One segment's audio (?format=, ?sample_rate=)")
async def get_segment(
    request: Request, job_id: str, segment_id: str, format: str = "wav", sample_rate: int | None = None
) -> Response:
    svc = services(request)
    job = await _jobs(svc).get(job_id)
    segment = job.segment(segment_id)
    if segment is None:
        raise NotFound(f"job {job_id} has no segment {segment_id!r}", code="segment_not_found")
    if segment.status != "done" or segment.audio is None:
        raise Conflict(f"segment {segment_id} is {segment.status}, not done", code="segment_not_ready",
                       segment_status=segment.status)
    fmt = _audio_format(format, tuple(OUTPUT_FORMATS))
    store = _jobs(svc).store
    data, rate = await anyio.to_thread.run_sync(segment_audio, store, segment, fmt, sample_rate)
    headers = {"X-Sample-Rate": str(rate), "X-Audio-Duration": str(segment.duration)}
    return Response(data, media_type=OUTPUT_FORMATS[fmt], headers=headers)


@router.get("/{job_id}/track", summary="Every segment at its start time on one timeline (?format=wav|flac|mp3)")
async def get_track(
    request: Request, job_id: str, format: str | None = None, sample_rate: int | None = None
) -> Response:
    svc = services(request)
    manager = _jobs(svc)
    job = await manager.get(job_id)
    if job.status not in FINISHED:
        raise Conflict(f"job {job_id} is {job.status}; the track is ready when it finishes", code="job_not_finished",
                       progress=job.progress())
    fmt = _audio_format(format or job.format, _TRACK_FORMATS)
    path, rate, placed = await anyio.to_thread.run_sync(job_track_file, job, manager.store, fmt, sample_rate)
    headers = {
        "X-Sample-Rate": str(rate),
        "X-Segments": str(placed),
        "Content-Disposition": f'attachment; filename="{job.id}.{fmt}"',
    }
    return FileResponse(path, media_type=OUTPUT_FORMATS[fmt], headers=headers,
                        background=BackgroundTask(path.unlink, missing_ok=True))


@router.get("/{job_id}/events", summary="Server-Sent Events: `progress` at every change, then `end`")
async def job_events(request: Request, job_id: str) -> StreamingResponse:
    manager = _jobs(services(request))
    await manager.get(job_id)  # 404 before the stream starts

    async def events() -> AsyncIterator[bytes]:
        last, fired, quiet = "", True, 0.0
        while True:
            changed = manager.changed(job_id)  # taken before reading the state: no change is missed
            try:
                job = await manager.get(job_id)
            except NotFound:
                yield b"event: end\ndata: {\"status\": \"deleted\"}\n\n"
                return
            payload = json.dumps({"id": job.id, "status": job.status, "progress": job.progress()})
            if fired or payload != last:  # a change here, or a new state in the file another replica writes
                yield f"event: progress\ndata: {payload}\n\n".encode()
                last, quiet = payload, 0.0
            if job.status in FINISHED:
                yield f"event: end\ndata: {payload}\n\n".encode()
                return
            # a job running here wakes us at every change; one another replica runs is read again shortly
            wait = _KEEPALIVE_SECONDS if manager.owns(job_id) else _POLL_SECONDS
            try:
                await asyncio.wait_for(changed.wait(), wait)
                fired = True
            except TimeoutError:
                fired, quiet = False, quiet + wait
                if quiet >= _KEEPALIVE_SECONDS:
                    yield b": keep-alive\n\n"
                    quiet = 0.0

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
