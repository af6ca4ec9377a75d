"""Streaming passthrough: the engine's PCM goes to the client as it arrives, never buffered as a clip."""

from __future__ import annotations

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
from gateway.services.context import Services

StreamFormat = Literal["wav", "pcm"]
STREAM_FORMATS: tuple[str, ...] = ("wav", "pcm")


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
            async for chunk in self._chunks:
                data = self._resampler.feed(chunk) if self._resampler else chunk
                if not data:
                    continue
                if first:
                    self._services.metrics.time_to_first_byte.observe(time.perf_counter() - self._started)
                    first = False
                frames += len(data) // 2
                yield data
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
    """Streams an OpenedStream within a time limit, and always closes it.

    The limit matters because a client that keeps its socket open but stops reading would otherwise hold the
    engine slot for ever (the body generator is never resumed while the send waits); the `finally` matters because
    a generator that never started never runs its own `finally`.
    """

    def __init__(self, opened: OpenedStream, *, media_type: str, headers: dict[str, str], limit: float) -> None:
        super().__init__(opened.body(), media_type=media_type, headers=headers)
        self._opened = opened
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self._limit):  # past it the body is cut: the client sees an aborted stream
                await super().__call__(scope, receive, send)
        finally:
            await self._opened.aclose()


async def open_stream(
    services: Services,
    request: SynthesisRequest,
    fmt: StreamFormat,
    *,
    target_rate: int | None,
    timeout: float | None,
) -> OpenedStream:
    """Queue, pick an engine and wait for its stream to start.

    Everything that can still become a clean JSON error (queue full, no engine, the engine refusing before its
    first byte) happens here, before the HTTP response starts.
    """
    started = time.perf_counter()
    stack = AsyncExitStack()
    try:
        stream = await stack.enter_async_context(services.pool.stream(request, timeout=timeout))
    except BaseException:
        await stack.aclose()
        raise
    return OpenedStream(services, stack, stream.chunks(), engine_rate=stream.sample_rate,
                        rate=target_rate or stream.sample_rate, fmt=fmt, started=started)


def stream_limit(services: Services, timeout: float | None) -> float:
    """How long a streamed answer may take in all: the client's deadline, else the gateway's cap."""
    return min(timeout, services.settings.max_request_seconds) if timeout else services.settings.max_request_seconds
