"""`AsyncClient`: the same API as `Client` for asyncio code (methods are coroutines, `stream` an async iterator)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying

from gateway.client import _calls as calls
from gateway.client._calls import AudioInput, AuxInput, Call, ClientBase, EventParser
from gateway.client._errors import GatewayConnectionError, error_from_response, error_from_transport
from gateway.client._models import CloneResult, Health, Job, SpeakerEmbedding, SpeechResult, Track, Voice

T = TypeVar("T")


class AsyncClient(ClientBase[httpx.AsyncClient]):
    """The gateway's API for asyncio code: coroutine methods, `stream` an async iterator (see `ClientBase`)."""

    _http_class = httpx.AsyncClient

    # ------------------------------------------------------------------------------------------ transport

    async def _open_once(self, call: Call[Any], stream: bool) -> httpx.Response:
        try:
            response = await self._http.send(call.build(self._http), stream=True)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from exc
        answered = response.is_success or response.status_code in call.accept
        if stream and answered:
            return response
        try:
            await response.aread()
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from exc
        finally:
            await response.aclose()
        if answered:
            return response
        raise error_from_response(response)

    async def _open(self, call: Call[Any], stream: bool = False) -> httpx.Response:
        """Send `call` (again while the retry policy allows); a streamed response is returned open."""
        return await AsyncRetrying(**self.retry.options())(self._open_once, call, stream)

    async def _call(self, call: Call[T]) -> T:
        return call.parse(await self._open(call))

    async def _chunks(self, call: Call[Any]) -> AsyncIterator[bytes]:
        response = await self._open(call, stream=True)
        try:
            async for chunk in response.aiter_bytes():
                yield chunk
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.url) from exc
        finally:
            await response.aclose()

    # ------------------------------------------------------------------------------------------ synthesis

    async def clone(
        self, text: str, reference: AudioInput | None = None, *, voice: str | None = None,
        aux_references: AuxInput = (), **fields: Any,
    ) -> CloneResult:
        """`POST /v1/voice-clone`: `reference` (a path or bytes) or a library `voice`, neither = the default
        voice; `aux_references`: more recordings of the same voice. Fields: `text_language`, `prompt_text`,
        `prompt_language`, `quality_retries`, `min_similarity`, engine knobs, ..."""
        return await self._call(calls.clone(text, reference, voice, aux_references, fields))

    async def speech(
        self, text: str, *, voice: str | None = None, reference: AudioInput | None = None,
        aux_references: AuxInput = (), response_format: str = "wav", **fields: Any,
    ) -> SpeechResult:
        """`POST /v1/audio/speech` as one whole clip in `response_format` (wav, mp3, opus, aac, flac, pcm)."""
        return await self._call(calls.speech(text, voice, reference, aux_references, response_format, False, fields))

    def stream(
        self, text: str, *, voice: str | None = None, reference: AudioInput | None = None,
        aux_references: AuxInput = (), response_format: str = "wav", **fields: Any,
    ) -> AsyncIterator[bytes]:
        """The audio as it is made: an async iterator of encoded chunks (the request is sent on the first one)."""
        return self._chunks(calls.speech(text, voice, reference, aux_references, response_format, True, fields))

    # ------------------------------------------------------------------------------------------ voices

    async def create_voice(
        self, name: str, audio: AudioInput, *, aux_references: AuxInput = (), **fields: Any
    ) -> Voice:
        """`aux_references`: more recordings of the same voice, kept with it. Fields: `prompt_text`,
        `prompt_language`, `description`, `model`, `trim_reference`. `voice.data["warnings"]` names an existing
        voice that sounds the same (with the gateway's `quality` extra)."""
        return await self._call(calls.create_voice(name, audio, aux_references, fields))

    async def list_voices(self) -> list[Voice]:
        return await self._call(calls.list_voices())

    async def get_voice(self, voice_id: str) -> Voice:
        return await self._call(calls.get_voice(voice_id))

    async def delete_voice(self, voice_id: str) -> None:
        await self._call(calls.delete_voice(voice_id))

    async def default_voice(self) -> str | None:
        """The default voice's id (used when a request names neither audio nor voice), or None."""
        return await self._call(calls.default_voice())

    async def set_default_voice(self, voice_id: str | None) -> str | None:
        """Make `voice_id` the default voice (None clears it)."""
        return await self._call(calls.set_default_voice(voice_id))

    # ------------------------------------------------------------------------------------------ jobs

    async def submit_job(
        self, *, subtitles: str | Path | None = None, source_subtitles: Path | None = None,
        source_audio: AudioInput | None = None, speakers: Mapping[str, AudioInput] | None = None,
        idempotency_key: str | None = None, **fields: Any,
    ) -> Job:
        """`POST /v1/jobs`: `segments=[...]` or `subtitles` (text, or a Path), job fields (`voice`, `language`,
        `seed`, `format`, ...); `speakers` maps speaker names to reference recordings."""
        call = calls.submit_job(subtitles, source_subtitles, source_audio, speakers, idempotency_key, fields)
        return await self._call(call)

    async def get_job(self, job_id: str) -> Job:
        return await self._call(calls.get_job(job_id))

    async def delete_job(self, job_id: str) -> Job | None:
        """Cancel a running job (returns it) or delete a finished one (returns None)."""
        return await self._call(calls.delete_job(job_id))

    async def wait_for_job(self, job_id: str, on_progress: Callable[[Job], Any] | None = None) -> Job:
        """Follow the job's events until it finishes, calling `on_progress` at every change (awaited when it is a
        coroutine function); the finished job.
        A stream cut off (a gateway restart) is opened again, up to `max_retries` times."""
        for _ in range(self.retry.max_retries + 1):
            parser, response = EventParser(), await self._open(calls.job_events(job_id), stream=True)
            try:
                async for line in response.aiter_lines():
                    if (event := parser.feed(line)) is None:
                        continue
                    if event[0] == "end":
                        return await self.get_job(job_id)
                    if on_progress is not None and inspect.isawaitable(done := on_progress(Job.from_json(event[1]))):
                        await done
            except httpx.TransportError:
                pass  # cut off mid-stream: open it again
            finally:
                await response.aclose()
        raise GatewayConnectionError(f"the event stream of job {job_id} kept breaking off", retryable=False)

    async def download_track(
        self, job_id: str, path: str | Path | None = None, *, format: str | None = None,
        sample_rate: int | None = None,
    ) -> Track:
        """A finished job's track (`format`: wav, flac, mp3; default the job's), also written to `path`."""
        result = await self._call(calls.track(job_id, format, sample_rate))
        if path is not None:
            result.save(path)
        return result

    # ------------------------------------------------------------------------------------------ speakers

    async def speaker_embedding(self, audio: AudioInput) -> SpeakerEmbedding:
        """Who is speaking in `audio`, as a unit vector; compare two with `.similarity()` (needs the gateway's
        `quality` extra: 501 without it)."""
        return await self._call(calls.speaker_embedding(audio))

    # ------------------------------------------------------------------------------------------ health

    async def health(self) -> Health:
        """`GET /readyz`: `ready` is False (not an error) when no engine can serve."""
        return await self._call(calls.health())

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
