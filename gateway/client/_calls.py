"""Every request the client makes, built once for both transports (sync and async): what to send, how to read
the answer. The transports only send, retry and hand the response to `parse`."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from gateway.client._models import CloneResult, Health, Job, SpeakerEmbedding, SpeechResult, Track, Voice
from gateway.client._retry import RetryPolicy

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

DEFAULT_URL = "http://127.0.0.1:8000"

#: a recording: a file path, or the file's bytes
AudioInput = str | os.PathLike[str] | bytes
#: extra recordings of the same voice: several, or one alone
AuxInput = Sequence[AudioInput] | AudioInput
FileField = tuple[str, bytes, str]
#: multipart files as (field, file) pairs: a field such as `aux_audio` may repeat
Files = list[tuple[str, FileField]]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange: the request's parts and the function that turns the (read) response into T."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: Files | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: error statuses that are answers here, not failures (`/readyz` says 503 when not ready)
    accept: frozenset[int] = frozenset()

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(self.method, self.path, params=self.params, data=self.data, files=self.files,
                                  json=self.json, headers=self.headers)


def base_url(url: str | None) -> str:
    """The gateway's URL: given, else `GATEWAY_URL`, else the local default."""
    return (url or os.environ.get("GATEWAY_URL") or DEFAULT_URL).rstrip("/")


def timeouts(seconds: float) -> httpx.Timeout:
    # a long read timeout: a whole-clip synthesis of a long text legitimately takes minutes
    return httpx.Timeout(seconds, connect=min(seconds, 10.0))


class ClientBase(Generic[H]):
    """What `Client` and `AsyncClient` share: the URL, the retry policy and one keep-alive httpx client.

    `url` defaults to `GATEWAY_URL`, then http://127.0.0.1:8000. Unknown keyword arguments of the methods go to
    the gateway as request fields (engine knobs such as `top_k`, `seed`, `speed`, and options added later), so
    new gateway features need no new client.
    """

    _http_class: type[H]

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 300.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = base_url(url)
        self.retry = RetryPolicy(max_retries, max_retry_wait)
        self._http: H = self._http_class(base_url=self.url, timeout=timeouts(timeout), headers=headers)


def _file(name: str, audio: AudioInput) -> FileField:
    if isinstance(audio, bytes):
        return (name, audio, "application/octet-stream")
    path = Path(audio)
    return (path.name, path.read_bytes(), "application/octet-stream")


def _uploads(named: Sequence[tuple[str, AudioInput | None]]) -> Files | None:
    """The recordings that were given, as multipart files (None when there are none)."""
    files = [(name, _file(name, audio)) for name, audio in named if audio is not None]
    return files or None


def _aux(aux_references: AuxInput) -> list[tuple[str, AudioInput | None]]:
    """Extra references of the same voice: repeated `aux_audio` files (api_v2 engines fuse the timbre).
    One path or bytes alone is one reference (a str is a Sequence too, of one-letter "paths")."""
    if isinstance(aux_references, str | bytes | os.PathLike):
        return [("aux_audio", aux_references)]
    return [("aux_audio", audio) for audio in aux_references]


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return str(value)


def _form(fields: Mapping[str, Any]) -> dict[str, str]:
    """Form fields as strings; None means "not sent" (the gateway's default applies)."""
    return {key: _form_value(value) for key, value in fields.items() if value is not None}


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body


def _nothing(response: httpx.Response) -> None:
    return None


# ------------------------------------------------------------------------------------------------- synthesis


def clone(
    text: str, reference: AudioInput | None, voice: str | None, aux_references: AuxInput,
    fields: Mapping[str, Any],
) -> Call[CloneResult]:
    """`POST /v1/voice-clone` as multipart; unknown `fields` (engine knobs, new options) go through as form fields."""
    return Call("POST", "/v1/voice-clone", lambda r: CloneResult.from_json(_json_object(r)),
                data=_form({"text": text, "voice_id": voice, **fields}),
                files=_uploads([("audio", reference), *_aux(aux_references)]))


def _speech_result(response_format: str) -> Callable[[httpx.Response], SpeechResult]:
    def parse(response: httpx.Response) -> SpeechResult:
        headers = response.headers
        rate, duration = headers.get("x-sample-rate"), headers.get("x-audio-duration")
        return SpeechResult(audio=response.content, sample_rate=int(rate) if rate else None, format=response_format,
                            duration=float(duration) if duration else None, request_id=headers.get("x-request-id"),
                            voice_id=headers.get("x-voice-id") or None, headers=dict(headers))

    return parse


def speech(
    text: str, voice: str | None, reference: AudioInput | None, aux_references: AuxInput,
    response_format: str, stream: bool, fields: Mapping[str, Any],
) -> Call[SpeechResult]:
    """`POST /v1/audio/speech`: JSON, or multipart when recordings are sent along."""
    body = {"input": text, "voice": voice, "response_format": response_format, "stream": stream, **fields}
    parse = _speech_result(response_format)
    files = _uploads([("reference_audio", reference), *_aux(aux_references)])
    if files is None:
        return Call("POST", "/v1/audio/speech", parse, json={k: v for k, v in body.items() if v is not None})
    return Call("POST", "/v1/audio/speech", parse, data=_form(body), files=files)


def speaker_embedding(audio: AudioInput) -> Call[SpeakerEmbedding]:
    """`POST /v1/speaker-embedding` (needs the gateway's `quality` extra, else 501)."""
    return Call("POST", "/v1/speaker-embedding", lambda r: SpeakerEmbedding.from_json(_json_object(r)),
                files=_uploads([("audio", audio)]))


# ------------------------------------------------------------------------------------------------- voices


def _voice(response: httpx.Response) -> Voice:
    return Voice.from_json(_json_object(response))


def create_voice(
    name: str, audio: AudioInput, aux_references: AuxInput, fields: Mapping[str, Any]
) -> Call[Voice]:
    return Call("POST", "/v1/voices", _voice, data=_form({"name": name, **fields}),
                files=_uploads([("audio", audio), *_aux(aux_references)]))


def list_voices() -> Call[list[Voice]]:
    return Call("GET", "/v1/voices", lambda r: [Voice.from_json(v) for v in _json_object(r)["voices"]])


def get_voice(voice_id: str) -> Call[Voice]:
    return Call("GET", f"/v1/voices/{voice_id}", _voice)


def delete_voice(voice_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/voices/{voice_id}", _nothing)


def default_voice() -> Call[str | None]:
    return Call("GET", "/v1/voices/default", lambda r: _json_object(r)["voice_id"])


def set_default_voice(voice_id: str | None) -> Call[str | None]:
    return Call("PUT", "/v1/voices/default", lambda r: _json_object(r)["voice_id"], json={"voice_id": voice_id})


# ------------------------------------------------------------------------------------------------- jobs


def _job(response: httpx.Response) -> Job:
    return Job.from_json(_json_object(response))


def submit_job(
    subtitles: str | Path | None,
    source_subtitles: Path | None,
    source_audio: AudioInput | None,
    speakers: Mapping[str, AudioInput] | None,
    idempotency_key: str | None,
    fields: Mapping[str, Any],
) -> Call[Job]:
    """`POST /v1/jobs`. Always with an Idempotency-Key (the caller's or a fresh one), so sending it again after
    a 429/503 or a lost connection can never make a second job. `subtitles` is the file's text (str) or a Path;
    files go as multipart (with the other fields as the `job` JSON field), else the job is a JSON body."""
    headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4().hex}"}
    body = {key: value for key, value in fields.items() if value is not None}
    uploads = _uploads([
        ("subtitles", subtitles if isinstance(subtitles, Path) else None),
        ("source_subtitles", source_subtitles),
        ("source_audio", source_audio),
        *[(f"speaker.{name}", audio) for name, audio in (speakers or {}).items()],
    ])
    if isinstance(subtitles, str):
        body["subtitles"] = subtitles
    if uploads is None:
        return Call("POST", "/v1/jobs", _job, json=body, headers=headers)
    return Call("POST", "/v1/jobs", _job, data={"job": json.dumps(body)}, files=uploads, headers=headers)


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{job_id}", _job)


def delete_job(job_id: str) -> Call[Job | None]:
    """Cancel a running job (the job comes back) or delete a finished one (nothing comes back)."""
    return Call("DELETE", f"/v1/jobs/{job_id}", lambda r: None if r.status_code == 204 else _job(r))


def job_events(job_id: str) -> Call[None]:
    return Call("GET", f"/v1/jobs/{job_id}/events", _nothing)


def track(job_id: str, track_format: str | None, sample_rate: int | None) -> Call[Track]:
    def parse(response: httpx.Response) -> Track:
        # the format the job chose when none was asked for is in the file name: attachment; filename="ID.flac"
        named = response.headers.get("content-disposition", "").rpartition(".")[2].strip('"')
        return Track(audio=response.content, sample_rate=int(response.headers["x-sample-rate"]),
                     format=track_format or named or "wav", segments=int(response.headers.get("x-segments", 0)))

    params = {key: value for key, value in {"format": track_format, "sample_rate": sample_rate}.items() if value}
    return Call("GET", f"/v1/jobs/{job_id}/track", parse, params=params or None)


class EventParser:
    """Server-Sent Events, one line at a time: `feed` returns (event, data) when an event is complete."""

    def __init__(self) -> None:
        self._event, self._data = "message", ""

    def feed(self, line: str) -> tuple[str, dict[str, Any]] | None:
        if line.startswith("event:"):
            self._event = line[6:].strip()
        elif line.startswith("data:"):
            self._data += line[5:].strip()
        elif not line and self._data:
            event, data = self._event, json.loads(self._data)
            self._event, self._data = "message", ""
            return event, data
        return None  # comments (keep-alives) and partial events


# ------------------------------------------------------------------------------------------------- health


def health() -> Call[Health]:
    def parse(response: httpx.Response) -> Health:
        body = _json_object(response)
        return Health(ready=response.status_code == 200, status=str(body.get("status")), data=body)

    return Call("GET", "/readyz", parse, accept=frozenset({503}))
