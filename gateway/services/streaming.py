"""Streaming passthrough: the engine's PCM goes to the client as it arrives, never buffered as a clip."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Literal

import numpy as np
import soxr

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


async def open_stream(
    services: Services,
    request: SynthesisRequest,
    fmt: StreamFormat,
    *,
    target_rate: int | None,
    timeout: float | None,
) -> tuple[int, AsyncIterator[bytes]]:
    """Queue, pick an engine and wait for its stream to start; return (rate, body iterator).

    Everything that can still become a clean JSON error (queue full, no engine, the engine refusing before its
    first byte) happens here, before the HTTP response starts. The iterator owns the engine slot and releases it
    when it finishes or the client leaves (the upstream read stops with it).
    """
    started = time.perf_counter()
    stack = AsyncExitStack()
    try:
        stream = await stack.enter_async_context(services.pool.stream(request, timeout=timeout))
    except BaseException:
        await stack.aclose()
        raise
    rate = target_rate or stream.sample_rate
    resampler = _PcmResampler(stream.sample_rate, rate) if rate != stream.sample_rate else None

    async def body() -> AsyncIterator[bytes]:
        first = True
        frames = 0
        try:
            if fmt == "wav":
                yield streaming_wav_header(rate)
            async for chunk in stream.chunks():
                data = resampler.feed(chunk) if resampler else chunk
                if not data:
                    continue
                if first:
                    services.metrics.time_to_first_byte.observe(time.perf_counter() - started)
                    first = False
                frames += len(data) // 2
                yield data
            if resampler:
                yield resampler.feed(b"", last=True)
            services.metrics.audio_seconds.inc(frames / rate)
        finally:
            await stack.aclose()

    return rate, body()
