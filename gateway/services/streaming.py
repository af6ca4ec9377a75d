"""Streaming passthrough: the engine's PCM goes to the client as it arrives, never buffered as a clip."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Literal

import anyio
import numpy as np
import soxr
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.audio.wav import streaming_wav_header
from gateway.engine.types import SynthesisRequest
from gateway.errors import EngineError
from gateway.services.context import Services

StreamFormat = Literal["wav", "pcm"]
STREAM_FORMATS: tuple[str, ...] = ("wav", "pcm")

log = logging.getLogger("gateway.services.streaming")


class _StreamCut(Exception):
    """The engine's stream failed after our 200 went out: the client's body must end aborted, not cleanly."""

    def __init__(self, error: EngineError) -> None:
        super().__init__(error.message)
        self.error = error


class _PcmResampler:
    """Chunk-by-chunk int16 resampling with soxr's streaming state (no clicks at chunk edges)."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self._stream = soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32")
        self._carry = b""

    def feed(self, pcm: bytes, *, last: bool = False) -> bytes:
        pcm = self._carry + pcm
        usable = len(pcm) - len(pcm) % 2  # a network read can split a sample
        self._carry = pcm[usable:]
        samples = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float32) / 32768.0
        out = self._stream.resample_chunk(samples, last=last)
        return bytes((np.clip(out, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


class OpenedStream:
    """An engine stream that has started: its rate, its body, and an idempotent close that frees the slot."""

    def __init__(self, services: Services, stack: AsyncExitStack, chunks: AsyncIterator[bytes], *,
                 engine_rate: int, rate: int, fmt: StreamFormat, started: float) -> None:
        self.rate = rate
        self._services = services
        self._stack = stack
        self._chunks = chunks
        self._resampler = _PcmResampler(engine_rate, rate) if rate != engine_rate else None
        self._fmt = fmt
        self._started = started

    async def body(self) -> AsyncIterator[bytes]:
        frames = 0
        first = True
        try:
            if self._fmt == "wav":
                yield streaming_wav_header(self.rate)
            try:
                async for chunk in self._chunks:
                    data = self._resampler.feed(chunk) if self._resampler else chunk
                    if not data:
                        continue
                    if first:
                        self._services.metrics.time_to_first_byte.observe(time.perf_counter() - self._started)
                        first = False
                    frames += len(data) // 2
                    yield data
            except EngineError as exc:  # an abort or a deadline mid-body: EngineAudioResponse cuts the stream
                raise _StreamCut(exc) from exc
            if self._resampler:
                yield self._resampler.feed(b"", last=True)
            self._services.metrics.audio_seconds.inc(frames / self.rate)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release the engine slot and close the upstream response (safe to call more than once)."""
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()


class EngineAudioResponse(StreamingResponse):
    """Streams an OpenedStream until the request's deadline, and always closes it.

    The deadline (`stream_deadline`, time.monotonic()) matters because a client that keeps its socket open
    but stops reading would otherwise hold the engine slot for ever (the body generator is never resumed
    while the send waits); the `finally` matters because a generator that never started never runs its own
    `finally`. Either way the body ends without its terminating chunk, so the client sees an aborted stream.

    An engine failure mid-body is one warning line (request id, engine, reason), not an ASGI traceback:
    returning without completing the response makes uvicorn close the connection, as an exception would
    (uvicorn still logs its one-line "ASGI callable returned without completing response.").
    """

    def __init__(self, opened: OpenedStream, *, media_type: str, headers: dict[str, str], deadline: float) -> None:
        super().__init__(opened.body(), media_type=media_type, headers=headers)
        self._opened = opened
        self._deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self._deadline - time.monotonic()):  # past it the body is cut
                await super().__call__(scope, receive, send)
        except _StreamCut as cut:
            request_id = scope.get("state", {}).get("request_id", "-")
            log.warning("stream cut after its 200 (request %s, engine %s): %s", request_id,
                        cut.error.engine or "-", cut.error.message)
        finally:
            await self._opened.aclose()


async def open_stream(
    services: Services,
    request: SynthesisRequest,
    fmt: StreamFormat,
    *,
    target_rate: int | None,
    deadline: float,
) -> OpenedStream:
    """Queue, pick an engine and wait for its stream to start, all before `deadline` (`stream_deadline`).

    Everything that can still become a clean JSON error (queue full, no engine, the engine refusing before its
    first byte, the deadline already past) happens here, before the HTTP response starts.
    """
    started = time.perf_counter()
    stack = AsyncExitStack()
    try:
        timeout = deadline - time.monotonic()  # ≤ 0: the pool answers with an EngineTimeout (504) at once
        stream = await stack.enter_async_context(services.pool.stream(request, timeout=timeout))
    except BaseException:
        await stack.aclose()
        raise
    return OpenedStream(services, stack, stream.chunks(), engine_rate=stream.sample_rate,
                        rate=target_rate or stream.sample_rate, fmt=fmt, started=started)


def stream_deadline(services: Services, timeout: float | None, arrived: float) -> float:
    """When a streamed answer must be over (time.monotonic()): the client's deadline (`X-Request-Timeout`),
    else the gateway's cap, counted from the request's arrival, so reading the upload, the queue wait and
    the stream all come out of one budget (a stuck client cannot hold a slot for queue wait + limit)."""
    cap = services.settings.max_request_seconds
    return arrived + (min(timeout, cap) if timeout else cap)
