"""`POST /v1/references/check`: what intake makes of a recording, before anything is generated or saved.

The web page shows the measured duration, the warnings and the trimmed silence of a reference as soon as it is
chosen; this runs the same checks as every upload (same limits, same error envelope) but stores nothing.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from gateway.api.context import services
from gateway.api.params import openapi_body, parse_params
from gateway.api.uploads import read_multipart
from gateway.audio.intake import prepare_reference
from gateway.errors import InvalidInput
from gateway.services.references import MAX_DECODE_SECONDS

router = APIRouter(prefix="/v1/references", tags=["references"])


class CheckFields(BaseModel):
    """Multipart fields of `POST /v1/references/check` (the recording is the `audio` file)."""

    trim_reference: bool = False


class ReferenceCheck(BaseModel):
    duration: float = Field(description="seconds the engine gets, after trimming silence")
    sample_rate: int = Field(description="of the normalised reference")
    speech_start: float = Field(description="seconds into the upload where the kept audio starts")
    speech_end: float = Field(description="seconds into the upload where the kept audio ends")
    trimmed_seconds: float = Field(description="leading + trailing silence removed")
    warnings: list[str]
    reference_id: str = Field(description="sha256 of the normalised reference, as synthesis answers report it")


@router.post(
    "/check",
    summary="Check a reference recording (duration, trimmed silence, warnings) without storing it",
    openapi_extra=openapi_body(CheckFields, files={"audio": "the reference recording"}, json_body=False,
                                required_files=("audio",)),
)
async def check_reference(request: Request) -> ReferenceCheck:
    svc = services(request)
    settings = svc.settings
    form = await read_multipart(request, max_file_bytes=settings.max_upload_bytes, file_fields=frozenset({"audio"}))
    fields = parse_params(CheckFields, dict(form.fields))
    upload = form.files.get("audio")
    if upload is None:
        raise InvalidInput("the reference recording is required as the 'audio' file field", code="missing_reference")
    ref = await anyio.to_thread.run_sync(
        lambda: prepare_reference(
            upload.data,
            min_seconds=settings.min_reference_seconds,
            max_seconds=settings.max_reference_seconds,
            trim_to_max=fields.trim_reference,
            max_decode_seconds=MAX_DECODE_SECONDS,
        ),
        limiter=svc.intake_limiter,
    )
    assert ref.speech_span is not None  # prepare_reference always measures it
    start, end = ref.speech_span
    return ReferenceCheck(
        duration=round(ref.duration, 3),
        sample_rate=ref.sample_rate,
        speech_start=round(start, 3),
        speech_end=round(end, 3),
        trimmed_seconds=round(ref.trimmed_seconds, 3),
        warnings=list(ref.warnings),
        reference_id=ref.sha256,
    )
