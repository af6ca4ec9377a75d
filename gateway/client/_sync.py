"""`Client`: the gateway's API from blocking Python code (pipelines, scripts, notebooks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from tenacity import Retrying

from gateway.client import _calls as calls
from gateway.client._calls import AudioInput, AuxInput, Call, ClientBase, EventParser
from gateway.client._errors import GatewayConnectionError, error_from_response, error_from_transport
from gateway.client._models import CloneResult, Health, Job, SpeakerEmbedding, SpeechResult, Track, Voice

T = TypeVar("T")


class Client(ClientBase[httpx.Client]):
    """The gateway's API, blocking: for pipelines, scripts and notebooks. Settings: see `ClientBase`."""

    _http_class = httpx.Client

    # ------------------------------------------------------------------------------------------ transport

    def _open_once(self, call: Call[Any], stream: bool) -> httpx.Response:
        try:
            response = self._http.send(call.build(self._http), stream=True)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from exc
        answered = response.is_success or response.status_code in call.accept
        if stream and answered:
            return response
        try:
            response.read()
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from exc
        finally:
            response.close()
        if answered:
            return response
        raise error_from_response(response)

    def _open(self, call: Call[Any], stream: bool = False) -> httpx.Response:
        """Send `call` (again while the retry policy allows); a streamed response is returned open."""
        return Retrying(**self.retry.options())(self._open_once, call, stream)

    def _call(self, call: Call[T]) -> T:
        return call.parse(self._open(call))

    def _chunks(self, call: Call[Any]) -> Iterator[bytes]:
        response = self._open(call, stream=True)
        try:
            yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from exc
        finally:
            response.close()

    # ------------------------------------------------------------------------------------------ synthesis

    def clone(
        self, text: str, reference: AudioInput | None = None, *, voice: str | None = None,
        aux_references: AuxInput = (), **fields: Any,
    ) -> CloneResult:
        """`POST /v1/voice-clone`: `reference` (a path or bytes) or a library `voice`, neither = the default
        voice; `aux_references`: more recordings of the same voice. Fields: `text_language`, `prompt_text`,
        `prompt_language`, `quality_retries`, `min_similarity`, engine knobs, ..."""
        return self._call(calls.clone(text, reference, voice, aux_references, fields))

    def speech(
        self, text: str, *, voice: str | None = None, reference: AudioInput | None = None,
        aux_references: AuxInput = (), response_format: str = "wav", **fields: Any,
    ) -> SpeechResult:
        """`POST /v1/audio/speech` as one whole clip in `response_format` (wav, mp3, opus, aac, flac, pcm)."""
        return self._call(calls.speech(text, voice, reference, aux_references, response_format, False, fields))

    def stream(
        self, text: str, *, voice: str | None = None, reference: AudioInput | None = None,
        aux_references: AuxInput = (), response_format: str = "wav", **fields: Any,
    ) -> Iterator[bytes]:
        """The audio as it is made: an iterator of encoded chunks (the request is sent on the first `next`)."""
        return self._chunks(calls.speech(text, voice, reference, aux_references, response_format, True, fields))

    # ------------------------------------------------------------------------------------------ voices

    def create_voice(
        self, name: str, audio: AudioInput, *, aux_references: AuxInput = (), **fields: Any
    ) -> Voice:
        """`aux_references`: more recordings of the same voice, kept with it. Fields: `prompt_text`,
        `prompt_language`, `description`, `model`, `trim_reference`. `voice.data["warnings"]` names an existing
        voice that sounds the same (with the gateway's `quality` extra)."""
        return self._call(calls.create_voice(name, audio, aux_references, fields))

    def list_voices(self) -> list[Voice]:
        return self._call(calls.list_voices())

    def get_voice(self, voice_id: str) -> Voice:
        return self._call(calls.get_voice(voice_id))

    def delete_voice(self, voice_id: str) -> None:
        self._call(calls.delete_voice(voice_id))

    def default_voice(self) -> str | None:
        """The default voice's id (used when a request names neither audio nor voice), or None."""
        return self._call(calls.default_voice())

    def set_default_voice(self, voice_id: str | None) -> str | None:
        """Make `voice_id` the default voice (None clears it)."""
        return self._call(calls.set_default_voice(voice_id))

    # ------------------------------------------------------------------------------------------ jobs

    def submit_job(
        self, *, subtitles: str | Path | None = None, source_subtitles: Path | None = None,
        source_audio: AudioInput | None = None, speakers: Mapping[str, AudioInput] | None = None,
        idempotency_key: str | None = None, **fields: Any,
    ) -> Job:
        """`POST /v1/jobs`: `segments=[...]` or `subtitles` (text, or a Path), job fields (`voice`, `language`,
        `seed`, `format`, ...); `speakers` maps speaker names to reference recordings."""
        call = calls.submit_job(subtitles, source_subtitles, source_audio, speakers, idempotency_key, fields)
        return self._call(call)

    def get_job(self, job_id: str) -> Job:
        return self._call(calls.get_job(job_id))

    def delete_job(self, job_id: str) -> Job | None:
        """Cancel a running job (returns it) or delete a finished one (returns None)."""
        return self._call(calls.delete_job(job_id))

    def wait_for_job(self, job_id: str, on_progress: Callable[[Job], Any] | None = None) -> Job:
        """Follow the job's events until it finishes, calling `on_progress` at every change; the finished job.
        A stream cut off (a gateway restart) is opened again, up to `max_retries` times."""
        for _ in range(self.retry.max_retries + 1):
            parser, response = EventParser(), self._open(calls.job_events(job_id), stream=True)
            try:
                for line in response.iter_lines():
                    if (event := parser.feed(line)) is None:
                        continue
                    if event[0] == "end":
                        return self.get_job(job_id)
                    if on_progress is not None:
                        on_progress(Job.from_json(event[1]))
            except httpx.TransportError:
                pass  # cut off mid-stream: open it again
            finally:
                response.close()
        raise GatewayConnectionError(f"the event stream of job {job_id} kept breaking off", retryable=False)

    def download_track(
        self, job_id: str, path: str | Path | None = None, *, format: str | None = None,
        sample_rate: int | None = None,
    ) -> Track:
        """A finished job's track (`format`: wav, flac, mp3; default the job's), also written to `path`."""
        result = self._call(calls.track(job_id, format, sample_rate))
        if path is not None:
            result.save(path)
        return result

    # ------------------------------------------------------------------------------------------ speakers

    def speaker_embedding(self, audio: AudioInput) -> SpeakerEmbedding:
        """Who is speaking in `audio`, as a unit vector; compare two with `.similarity()` (needs the gateway's
        `quality` extra: 501 without it)."""
        return self._call(calls.speaker_embedding(audio))

    # ------------------------------------------------------------------------------------------ health

    def health(self) -> Health:
        """`GET /readyz`: `ready` is False (not an error) when no engine can serve."""
        return self._call(calls.health())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
