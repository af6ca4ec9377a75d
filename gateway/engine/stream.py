"""A streaming synthesis as the engine layer hands it on: sample rate known, PCM chunks as they arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from gateway.audio.wav import parse_wav
from gateway.engine.types import EngineInfo, SynthesisResult
from gateway.errors import EngineBadResponse, EngineError, EngineTimeout

# v1 "streams" arrive as one WAV at the end; hand the PCM on in slices of this size.
_V1_STREAM_SLICE = 64 * 1024


class EngineStream:
    """A streaming synthesis in progress: the sample rate is known and the first audio bytes are in hand.

    `chunks()` yields raw int16 LE mono PCM as it arrives, cut on 2-byte boundaries so no sample is
    ever split between chunks. An abort mid-body raises EngineBadResponse; passing the deadline raises
    EngineTimeout. `error` / `finished` let the owner (the pool) learn how the stream ended.
    """

    def __init__(
        self,
        engine: EngineInfo,
        sample_rate: int,
        first_pcm: bytes,
        body: AsyncIterator[bytes],
        deadline: float,
        warnings: list[str] | None = None,
    ) -> None:
        self.engine = engine
        self.sample_rate = sample_rate
        self.warnings = warnings or []
        self.error: EngineError | None = None
        self.finished = False
        self.attempts = 1  # set by the pool: attempts it took to open, and time spent queued
        self.queue_wait = 0.0
        self._pending = first_pcm
        self._body = body
        self._deadline = deadline

    async def chunks(self) -> AsyncIterator[bytes]:
        carry, self._pending = self._pending, b""
        try:
            while True:
                usable = len(carry) - len(carry) % 2
                if usable:
                    yield carry[:usable]
                    carry = carry[usable:]
                piece = await next_piece(self._body, self._deadline, self.engine.url)
                if piece is None:
                    break
                carry += piece
            self.finished = True
        except EngineError as exc:
            self.error = exc
            raise


async def next_piece(body: AsyncIterator[bytes], deadline: float, url: str) -> bytes | None:
    """One network read of a streaming body within the deadline; None at the end of the body."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            return await anext(body, None)
    except (TimeoutError, httpx.TimeoutException):
        raise EngineTimeout(f"engine {url} did not finish the stream before the deadline", engine=url) from None
    except httpx.HTTPError as exc:
        raise EngineBadResponse(f"engine {url} aborted the stream: {exc}", engine=url) from exc


def stream_from_wav(result: SynthesisResult, deadline: float) -> EngineStream:
    """Present a finished v1 WAV as an EngineStream (the PCM is handed on in slices)."""
    info = parse_wav(result.wav)
    pcm = result.wav[info.data_offset : info.data_offset + info.data_size]

    async def slices() -> AsyncIterator[bytes]:
        for start in range(_V1_STREAM_SLICE, len(pcm), _V1_STREAM_SLICE):
            yield pcm[start : start + _V1_STREAM_SLICE]

    return EngineStream(result.engine, result.sample_rate, pcm[:_V1_STREAM_SLICE], slices(), deadline, result.warnings)
