"""One GPT-SoVITS engine over HTTP: flavour detection, synthesis, streaming, weight switches, probes.

The client never retries (the pool is the only retry loop) and never decides *where* to go next: it turns
every engine answer into either a checked result or one typed EngineError that says whether another
attempt can help:

- connection refused / reset / closed before any response byte → EngineUnavailable (retryable: the
  request never ran; engine-protocol §11: a keep-alive connection is reset after an engine 500)
- no answer before the deadline → EngineTimeout (not retried: the engine may still be working on it)
- non-200 → classified by the flavour's protocol module (EngineRejected or EngineBadResponse)
- 200 with a body that is not a usable WAV (truncated, garbage, 0 frames, the 16 kHz silence
  placeholder) → EngineBadResponse (retryable)

Every deadline around an httpx call is an anyio scope, never asyncio.timeout: httpcore shields its
connection cleanup with anyio, which a native cancel pierces (stream.next_piece says what that costs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import httpx

from gateway.audio.wav import (
    PLACEHOLDER_RATE,
    STREAMING_HEADER_SIZE,
    WavInfo,
    is_silence_placeholder,
    parse_wav,
)
from gateway.engine import protocol_v1, protocol_v2
from gateway.engine.control import EngineControl
from gateway.engine.stream import EngineStream, next_piece, stream_from_wav
from gateway.engine.types import EngineInfo, SynthesisRequest, SynthesisResult
from gateway.errors import EngineBadResponse, EngineError, EngineTimeout, EngineUnavailable
from gateway.logs import request_id_var
from gateway.settings import Settings

__all__ = ["EngineStream", "VoiceCloner"]

log = logging.getLogger("gateway.engine")

#: Output rates that identify the loaded model version (engine-protocol §3.8); 32 kHz is v1/v2/v2Pro alike.
_VERSION_BY_RATE = {24000: "v3", 48000: "v4"}
_ERROR_BODY_LIMIT = 64 * 1024
# A streaming header longer than this without a data chunk is not a header.
_STREAM_HEADER_LIMIT = 4096
# Below uvicorn's 5 s keep-alive: drop an idle pooled connection before the engine closes it under us.
_KEEPALIVE_EXPIRY = 4.0

Classifier = Callable[[int, bytes, str], EngineError]


class VoiceCloner(EngineControl):
    """The client for one engine URL: one keep-alive httpx.AsyncClient, no retries of its own.

    Every error names the engine by its id (`e0`, `e1`, ... in GATEWAY_ENGINES order), never its URL: error
    messages reach clients, and an engine's URL (whose `/control` kills it) is for operators only (logs,
    metrics, `/readyz?verbose=1`).
    """

    def __init__(self, url: str, settings: Settings, engine_id: str = "e0") -> None:
        self.url = url.rstrip("/")
        self.id = engine_id
        self._settings = settings
        self._forced_flavor = None if settings.engine_flavor == "auto" else settings.engine_flavor
        self.info = EngineInfo(url=self.url, id=self.id, flavor=self._forced_flavor or "unknown")
        # retries=0: httpx must not silently resend a synthesis; the pool decides where a retry goes.
        transport = httpx.AsyncHTTPTransport(
            retries=0,
            limits=httpx.Limits(max_connections=settings.engine_concurrency + 2, keepalive_expiry=_KEEPALIVE_EXPIRY),
        )
        self._transport = transport
        self._http = httpx.AsyncClient(
            base_url=self.url,
            transport=transport,
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            follow_redirects=False,
        )

    # ------------------------------------------------------------------ discovery and probes

    async def detect_flavor(self) -> str:
        """api_v2 or api.py, from the paths in /openapi.json (settings.engine_flavor forces it)."""
        if self._forced_flavor:
            return self._forced_flavor
        status, body = await self._quick_get("/openapi.json")
        if status != 200:
            raise EngineBadResponse(f"engine {self.id} answered HTTP {status} on /openapi.json", engine=self.id)
        try:
            paths = set(json.loads(body).get("paths", {}))
        except (ValueError, AttributeError) as exc:
            raise EngineBadResponse(f"engine {self.id} sent an unreadable /openapi.json", engine=self.id) from exc
        if {protocol_v2.SYNTHESIS_PATH, protocol_v2.SET_GPT_PATH} <= paths:
            flavor = "v2"
        elif {protocol_v1.SYNTHESIS_PATH, protocol_v1.SET_MODEL_PATH, "/change_refer"} <= paths:
            flavor = "v1"
        else:
            raise EngineBadResponse(
                f"engine {self.id} is neither api_v2.py (/tts) nor api.py (/, /set_model): paths {sorted(paths)}",
                engine=self.id,
            )
        if flavor != self.info.flavor:  # another server now: what we knew of its version is stale
            self.info = replace(self.info, flavor=flavor, version=None)
        return flavor

    def adopt(self, flavor: str, version: str | None) -> None:
        """What another replica's probe learned about this engine (gateway/coord): no need to ask again."""
        if self._forced_flavor is None or self._forced_flavor == flavor:
            self.info = replace(self.info, flavor=flavor, version=version or self.info.version)

    async def is_available(self) -> bool:
        """/openapi.json answers 200 within connect_timeout. api_v2 answers nothing while it synthesizes,
        so callers must only ask an idle engine."""
        try:
            status, _ = await self._quick_get("/openapi.json")
        except EngineError:
            return False
        return status == 200

    async def probe_version(self) -> str | None:
        """Learn an idle api_v2 engine's loaded model version from a validation-only request.

        `text_lang=__` fails validation with `... is not supported in version vN` before any synthesis,
        so this costs nothing on the engine. api.py has no such route: None.
        """
        if self.info.flavor != "v2":
            return self.info.version
        status, body = await self._quick_get(protocol_v2.SYNTHESIS_PATH, protocol_v2.VERSION_PROBE_PARAMS)
        version = protocol_v2.version_from_error(body) if status == 400 else None
        if version:
            self.info = replace(self.info, version=version)
        return version

    async def _quick_get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        """A small GET bounded by connect_timeout as a whole (probes must never hang)."""
        limit = self._settings.connect_timeout
        try:
            with anyio.fail_after(limit):
                response = await self._http.get(path, params=params, timeout=httpx.Timeout(limit))
        except TimeoutError:
            message = f"engine {self.id} did not answer {path} within {limit:g}s"
            raise EngineUnavailable(message, engine=self.id) from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, responded=False) from exc
        return response.status_code, response.content

    async def _ensure_flavor(self) -> str:
        if self.info.flavor == "unknown":
            return await self.detect_flavor()
        return self.info.flavor

    # ------------------------------------------------------------------ synthesis

    async def synthesize(self, req: SynthesisRequest, *, timeout: float) -> SynthesisResult:
        """One whole-file synthesis within `timeout` seconds, checked before it counts as a success."""
        started = time.monotonic()
        try:
            with anyio.fail_after(max(timeout, 0)):
                flavor = await self._ensure_flavor()
                path, body, warnings, classify = self._synthesis_call(req, flavor, streaming=False)
                data = await self._post_for_body(path, body, timeout, classify)
        except TimeoutError:
            raise EngineTimeout(f"engine {self.id} did not answer within {timeout:.1f}s", engine=self.id) from None
        info = self._check_wav(data)
        return SynthesisResult(
            wav=data,
            sample_rate=info.sample_rate,
            frames=info.frames,
            engine=self.info,
            engine_seconds=time.monotonic() - started,
            warnings=warnings,
        )

    def _synthesis_call(
        self, req: SynthesisRequest, flavor: str, *, streaming: bool
    ) -> tuple[str, dict[str, Any], list[str], Classifier]:
        if flavor == "v1":
            protocol_v1.check_request(req, self.id)
            body, warnings = protocol_v1.build_synthesis_body(req)
            return protocol_v1.SYNTHESIS_PATH, body, warnings, protocol_v1.classify_error
        body, warnings = protocol_v2.build_tts_body(req, streaming=streaming, version=self.info.version)
        return protocol_v2.SYNTHESIS_PATH, body, warnings, protocol_v2.classify_error

    def _timeouts(self, seconds: float) -> httpx.Timeout:
        return httpx.Timeout(seconds, connect=min(self._settings.connect_timeout, seconds))

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Straight to the transport (a public httpx API): the client's layers around it (auth, redirects,
        cookie extraction, event hooks) do nothing for an engine and cost ~0.3 ms of CPU per call. The
        request carries its timeouts; the transport maps httpcore's errors to httpx's, as the client would."""
        try:
            response = await self._transport.handle_async_request(request)
            response.request = request
            return response
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, responded=False) from exc

    async def _post_for_body(self, path: str, body: dict[str, Any], timeout: float, classify: Classifier) -> bytes:
        request = self._http.build_request(
            "POST", path, json=body, headers=_trace_headers(), timeout=self._timeouts(timeout)
        )
        response = await self._send(request)
        try:
            if response.status_code != 200:
                raise await self._error_from(response, classify)
            pieces = [piece async for piece in response.aiter_raw()]
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, responded=True) from exc
        finally:
            await response.aclose()
        data = b"".join(pieces)
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != len(data):
            raise EngineBadResponse(f"engine {self.id} sent {len(data)} of {declared} bytes", engine=self.id)
        return data

    async def _error_from(self, response: httpx.Response, classify: Classifier) -> EngineError:
        """Classify a non-200 answer. A 5xx body is not read: closing an unread response drops the
        connection, and after a 500 the engine drops it anyway (§11), so it is never reused."""
        body = b""
        if response.status_code < 500:
            async for piece in response.aiter_raw():
                body += piece
                if len(body) > _ERROR_BODY_LIMIT:
                    break
            if self.info.flavor == "v2" and (version := protocol_v2.version_from_error(body)):
                self.info = replace(self.info, version=version)
        return classify(response.status_code, body, self.id)

    def _transport_error(self, exc: httpx.HTTPError, *, responded: bool) -> EngineError:
        where = f"engine {self.id}"
        if isinstance(exc, httpx.ConnectTimeout):
            return EngineUnavailable(f"{where} did not accept a connection: {exc!r}", engine=self.id)
        if isinstance(exc, httpx.ConnectError):
            return EngineUnavailable(f"{where} refused the connection: {exc}", engine=self.id)
        if isinstance(exc, httpx.TimeoutException):
            return EngineTimeout(f"{where} did not answer in time ({type(exc).__name__})", engine=self.id)
        if not responded and isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return EngineUnavailable(f"{where} closed the connection before answering: {exc}", engine=self.id)
        return EngineBadResponse(f"{where} cut the answer short: {exc}", engine=self.id)

    def _check_wav(self, data: bytes) -> WavInfo:
        """A success must be a readable, non-empty WAV that is not the engine's error placeholder."""
        try:
            info = parse_wav(data)
        except ValueError as exc:
            raise EngineBadResponse(
                f"engine {self.id} returned unusable audio ({len(data)} bytes): {exc}", engine=self.id
            ) from exc
        if is_silence_placeholder(data):
            raise EngineBadResponse(
                f"engine {self.id} returned its error placeholder (1 s of 16 kHz silence): "
                "the synthesis failed inside the engine",
                engine=self.id,
                code="engine_silence",
            )
        if info.frames == 0:
            raise EngineBadResponse(f"engine {self.id} returned a WAV with no audio", engine=self.id)
        self._learn_version_from_rate(info.sample_rate)
        return info

    def _learn_version_from_rate(self, rate: int) -> None:
        known = self.info.version
        if rate in _VERSION_BY_RATE:
            self.info = replace(self.info, version=_VERSION_BY_RATE[rate])
        elif rate == 32000 and known in ("v3", "v4"):
            self.info = replace(self.info, version=None)  # the weights changed under us

    # ------------------------------------------------------------------ streaming

    @asynccontextmanager
    async def stream(
        self, req: SynthesisRequest, *, timeout: float, caller_deadline: float | None = None
    ) -> AsyncIterator[EngineStream]:
        """Open a streaming synthesis; on entry the header and the first audio bytes have arrived.

        `timeout` is the engine's budget; `caller_deadline` (loop time) the caller's wall clock, whose
        expiry names no engine. Leaving the context closes the upstream response, so the engine stops
        at its next chunk. api.py streams only Ogg/AAC (server-wide flag), so for v1 engines this is a
        whole-file synthesis handed on as PCM: correct, just without early audio.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        try:
            with anyio.fail_after(deadline - loop.time()):
                flavor = await self._ensure_flavor()
        except TimeoutError:
            raise EngineTimeout(f"engine {self.id} did not answer in time", engine=self.id) from None
        if flavor == "v1":
            result = await self.synthesize(req, timeout=deadline - loop.time())
            yield stream_from_wav(result, deadline)
            return
        path, body, warnings, classify = self._synthesis_call(req, flavor, streaming=True)
        request = self._http.build_request(
            "POST", path, json=body, headers=_trace_headers(), timeout=self._timeouts(timeout)
        )
        try:
            with anyio.fail_after(deadline - loop.time()):
                response = await self._send(request)
        except TimeoutError:
            raise EngineTimeout(f"engine {self.id} did not answer within {timeout:.1f}s", engine=self.id) from None
        try:
            if response.status_code != 200:
                raise await self._stream_error(response, classify, deadline)
            stream = await self._open_stream(response.aiter_raw(), deadline, warnings, caller_deadline)
            stream.note_first_wait(loop.time() - started)
            yield stream
        finally:
            await response.aclose()

    async def _stream_error(self, response: httpx.Response, classify: Classifier, deadline: float) -> EngineError:
        """The error of a non-200 streaming answer; reading its body is bounded and never leaks httpx errors."""
        try:
            with anyio.fail_after(deadline - anyio.current_time()):
                return await self._error_from(response, classify)
        except TimeoutError:
            return EngineTimeout(f"engine {self.id} did not finish its error answer in time", engine=self.id)
        except httpx.HTTPError as exc:
            return self._transport_error(exc, responded=True)

    async def _open_stream(
        self, body: AsyncIterator[bytes], deadline: float, warnings: list[str], caller_deadline: float | None
    ) -> EngineStream:
        """Read the streaming WAV header and at least one PCM byte: the point of no retry."""
        buffer = b""
        while True:
            piece = await next_piece(body, deadline, self.id, caller_deadline)
            if piece is None:
                raise EngineBadResponse(
                    f"engine {self.id} ended the stream before any audio ({len(buffer)} bytes)", engine=self.id
                )
            buffer += piece
            if len(buffer) <= STREAMING_HEADER_SIZE:
                continue
            try:
                header = parse_wav(buffer)
            except ValueError as exc:
                if buffer.startswith(b"RIFF") and len(buffer) < _STREAM_HEADER_LIMIT:
                    continue  # a header split across reads
                raise EngineBadResponse(f"engine {self.id} sent a bad stream header: {exc}", engine=self.id) from exc
            if len(buffer) > header.data_offset:
                break
        if header.sample_rate == PLACEHOLDER_RATE or header.channels != 1 or header.bits_per_sample != 16:
            raise EngineBadResponse(
                f"engine {self.id} streamed {header.channels} x {header.bits_per_sample}-bit audio at "
                f"{header.sample_rate} Hz (16 kHz is its error placeholder)",
                engine=self.id,
            )
        self._learn_version_from_rate(header.sample_rate)
        pcm = buffer[header.data_offset :]
        return EngineStream(
            self.info, header.sample_rate, pcm, body, deadline, warnings, caller_deadline=caller_deadline
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _trace_headers() -> dict[str, str] | None:
    """The client request's id on the engine call, so an engine's log line can be matched with ours."""
    request_id = request_id_var.get()
    return {"X-Request-ID": request_id} if request_id else None
