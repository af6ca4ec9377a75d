"""The voice library: register a reference once, reuse it by id or name."""

from __future__ import annotations

import re
import unicodedata
import urllib.parse

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from gateway.api.context import services
from gateway.api.params import openapi_body, parse_params
from gateway.api.uploads import read_json, read_multipart
from gateway.auth import require_admin
from gateway.errors import InvalidInput
from gateway.services.references import intake_reference, naming_aux
from gateway.services.synthesis import check_language, resolve_weights
from gateway.services.voices import write_library
from gateway.voices.store import Voice

router = APIRouter(prefix="/v1/voices", tags=["voices"])


class VoiceFields(BaseModel):
    """Multipart fields of `POST /v1/voices` (the reference is the `audio` file)."""

    name: str = Field(min_length=1, max_length=64)
    prompt_text: str = Field("", max_length=1000)
    prompt_language: str = "auto"
    description: str | None = Field(None, max_length=1000)
    model: str | None = Field(None, max_length=128, description="a GATEWAY_MODELS name: engine weights to use")
    trim_reference: bool = False


class CreatedVoice(Voice):
    warnings: list[str] = Field(
        default_factory=list, description="about the reference: its quality, or an existing voice it sounds like"
    )


class DefaultVoice(BaseModel):
    voice_id: str | None


@router.post(
    "",
    status_code=201,
    summary="Create a voice from a reference recording",
    dependencies=[require_admin],
    openapi_extra=openapi_body(
        VoiceFields,
        files={"audio": "the reference recording",
               "aux_audio": "an extra reference of the same voice (repeatable; api_v2 engines fuse the timbre)"},
        json_body=False, required_files=("audio",),
    ),
)
async def create_voice(request: Request) -> CreatedVoice:
    svc = services(request)
    form = await read_multipart(
        request, max_file_bytes=svc.settings.max_upload_bytes, file_fields=frozenset({"audio"}),
        repeatable=frozenset({"aux_audio"}), max_repeats=svc.settings.max_aux_references,
    )
    fields = parse_params(VoiceFields, dict(form.fields))
    upload = form.files.get("audio")
    if upload is None:
        raise InvalidInput("the reference recording is required as the 'audio' file field", code="missing_reference")
    language = check_language(svc, fields.prompt_language, "prompt_language")
    weights = resolve_weights(svc, fields.model)
    reference, _ = await intake_reference(svc, upload.data, trim_to_max=fields.trim_reference)
    # each extra reference passes the same intake checks as the main one (a bad one names its field)
    aux = []
    for index, extra in enumerate(form.repeated.get("aux_audio", [])):
        with naming_aux(index):
            aux.append((await intake_reference(svc, extra.data, trim_to_max=fields.trim_reference))[0])
    embedding, similar = await svc.speakers.embed_new_voice(svc.voices, reference)
    voice = await write_library(
        svc,
        "save the voice",
        lambda: svc.voices.create(
            name=fields.name,
            reference=reference,
            prompt_text=fields.prompt_text,
            prompt_language=language,
            description=fields.description,
            weights=weights,
            aux_references=aux,
        ),
    )
    if embedding is not None:
        await svc.speakers.store_voice_embedding(voice.id, embedding)
    return CreatedVoice(**voice.model_dump(), warnings=[*reference.warnings, *similar])


@router.get("", summary="List voices")
async def list_voices(request: Request) -> dict[str, list[Voice]]:
    return {"voices": await anyio.to_thread.run_sync(services(request).voices.list)}


@router.get("/default", summary="The default voice (used when a request names neither audio nor voice)")
async def get_default(request: Request) -> DefaultVoice:
    voice = await anyio.to_thread.run_sync(services(request).voices.default)
    return DefaultVoice(voice_id=voice.id if voice else None)


@router.put(
    "/default",
    summary="Set (or with null, clear) the default voice",
    dependencies=[require_admin],
    openapi_extra={"requestBody": {"required": True,
                                   "content": {"application/json": {"schema": DefaultVoice.model_json_schema()}}}},
)
async def set_default(request: Request) -> DefaultVoice:
    body = parse_params(DefaultVoice, await read_json(request, max_bytes=10_000))
    svc = services(request)
    await write_library(svc, "save the default voice", lambda: svc.voices.set_default(body.voice_id))
    return body


@router.delete("/default", status_code=204, summary="Clear the default voice", dependencies=[require_admin])
async def clear_default(request: Request) -> Response:
    svc = services(request)
    await write_library(svc, "save the default voice", lambda: svc.voices.set_default(None))
    return Response(status_code=204)


@router.get("/{voice_id}", summary="One voice")
async def get_voice(request: Request, voice_id: str) -> Voice:
    return await anyio.to_thread.run_sync(services(request).voices.get, voice_id)


@router.get("/{voice_id}/audio", summary="Download the voice's normalised reference (PCM16 mono WAV)")
async def get_voice_audio(request: Request, voice_id: str) -> FileResponse:
    store = services(request).voices
    voice = await anyio.to_thread.run_sync(store.get, voice_id)
    headers = {"Content-Disposition": content_disposition(voice.name)}
    return FileResponse(store.reference_path(voice), media_type="audio/wav", headers=headers)


def content_disposition(stem: str, extension: str = ".wav") -> str:
    """`attachment` with a plain ASCII file name any client can use as is, plus the UTF-8 name as RFC 6266 /
    RFC 5987 `filename*`; a name such as `../../etc/passwd` reaches no client as a path."""
    flat = re.sub(r"_+", "_", re.sub(r"[\\/:\x00-\x1f\x7f]|\.\.+", "_", stem)).strip(" ._") or "voice"
    ascii_stem = unicodedata.normalize("NFKD", flat).encode("ascii", "ignore").decode("ascii")
    ascii_stem = re.sub(r"[^A-Za-z0-9. -]+", "_", ascii_stem).strip(" ._") or "voice"
    value = f'attachment; filename="{ascii_stem}{extension}"'
    if flat != ascii_stem:
        value += f"; filename*=UTF-8''{urllib.parse.quote(flat + extension, safe='')}"
    return value


@router.delete("/{voice_id}", status_code=204, summary="Delete a voice (its reference file stays shared)",
               dependencies=[require_admin])
async def delete_voice(request: Request, voice_id: str) -> Response:
    svc = services(request)
    await write_library(svc, "delete the voice", lambda: svc.voices.delete(voice_id))
    await anyio.to_thread.run_sync(svc.speakers.voice_embeddings.forget, voice_id)
    return Response(status_code=204)
