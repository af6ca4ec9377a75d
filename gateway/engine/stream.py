"""A streaming synthesis as the engine layer hands it on: sample rate known, PCM chunks as they arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import anyio
import httpx
import numpy as np

from gateway.audio.wav import parse_wav
from gateway.engine.types import EngineInfo, SynthesisResult
from gateway.errors import EngineBadResponse, EngineError, EngineTimeout

# v1 "streams" arrive as one WAV at the end; hand the PCM on in slices of this size.
_V1_STREAM_SLICE = 64 * 1024
# How long a stream left early keeps its slot: a generous multiple of the slowest wait for a chunk seen so far,
# within these bounds (and never past the engine's own deadline). See `stop_grace_for`.
STOP_GRACE_FACTOR = 4.0
STOP_GRACE_MIN = 1.0
STOP_GRACE_MAX = 15.0


def stop_grace_for(slowest_wait: float, remaining: float) -> float:
    """Seconds to keep an engine's slot after its stream was left early, given the slowest wait for a chunk
    seen so far on that engine and the seconds left of the engine's deadline.

    Why so conservative: after we close the connection nothing comes back from the engine, so the gateway
    cannot see when it really stops. It stops at its next chunk boundary (engine-protocol §3.9), once the
    step in progress is done, and under load that step is slower than the chunks we timed: on 2 busy
    cores, CPU engines stopped up to 1.9 × the slowest wait seen after we closed (up to 7.7 s), so the
    old 1.5 × (at most 2 s) let the next request in while the engine was still working. Two requests on
    one engine mix voices (§6), which the gateway must never allow; a few idle engine seconds after a
    (rare) abandoned stream cost little. Hence 4 × the slowest wait (about twice the worst seen), at
    least STOP_GRACE_MIN, at most STOP_GRACE_MAX (one freak measurement must not idle an engine for
    long), and never past the engine's deadline, when we would have timed the engine out anyway.
    """
    grace = min(STOP_GRACE_MAX, max(STOP_GRACE_MIN, STOP_GRACE_FACTOR * slowest_wait))
    return max(0.0, min(grace, remaining))


class EngineStream:
    """A streaming synthesis in progress: the sample rate is known and the first audio bytes are in hand.

    `chunks()` yields raw int16 LE mono PCM as it arrives, cut on 2-byte boundaries so no sample is
    ever split between chunks. An abort mid-body raises EngineBadResponse; passing the deadline raises
    EngineTimeout. `error` / `finished` let the owner (the pool) learn how the stream ended.

    Two clocks: `deadline` is the engine's budget and is pushed back by the time the consumer spends
    between chunks (a slow reader is not a slow engine); `caller_deadline` is the caller's wall clock,
    and passing it raises an EngineTimeout that names no engine, so the engine's health is untouched.
    """

    def __init__(
        self,
        engine: EngineInfo,
        sample_rate: int,
        first_pcm: bytes,
        body: AsyncIterator[bytes],
        deadline: float,
        warnings: list[str] | None = None,
        *,
        caller_deadline: float | None = None,
        live: bool = True,
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
        self._caller_deadline = caller_deadline
        self._longest_wait = 0.0
        self._live = live  # False: the engine already finished (a v1 whole file handed on in slices)

    def note_first_wait(self, seconds: float) -> None:
        """The time to the first audio: the first measure of how long the engine takes per chunk."""
        self._longest_wait = max(self._longest_wait, seconds)

    @property
    def longest_wait(self) -> float:
        """The longest the engine has made us wait for a chunk of this stream so far (the first included)."""
        return self._longest_wait

    def stop_grace(self, slowest_seen: float = 0.0) -> float:
        """Seconds a stream left early keeps its slot (see `stop_grace_for`): from the slowest wait for a
        chunk of this stream or, if slower, of earlier streams on the engine (`slowest_seen`)."""
        if not self._live:
            return 0.0
        remaining = self._deadline - asyncio.get_running_loop().time()
        return stop_grace_for(max(self._longest_wait, slowest_seen), remaining)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        carry, self._pending = self._pending, b""
        try:
            while True:
                usable = len(carry) - len(carry) % 2
                if usable:
                    handed = loop.time()
                    yield carry[:usable]
                    self._deadline += loop.time() - handed  # the consumer's time is not the engine's
                    carry = carry[usable:]
                asked = loop.time()
                piece = await next_piece(self._body, self._deadline, self.engine.id, self._caller_deadline)
                self._longest_wait = max(self._longest_wait, loop.time() - asked)
                if piece is None:
                    break
                carry += piece
            self.finished = True
        except EngineError as exc:
            self.error = exc
            raise


async def next_piece(
    body: AsyncIterator[bytes], deadline: float, engine: str, caller_deadline: float | None = None
) -> bytes | None:
    """One network read of a streaming body within the deadlines (loop time); None at the end of the body.
    `engine` is the engine's id (`e0`): it goes into client-facing errors.

    Only the engine's own `deadline` running out is the engine's fault; the caller's names no engine.
    """
    callers_first = caller_deadline is not None and caller_deadline < deadline
    limit = caller_deadline if callers_first and caller_deadline is not None else deadline
    remaining = limit - asyncio.get_running_loop().time()
    try:
        if remaining <= 0:
            raise TimeoutError
        # an anyio deadline, not asyncio.timeout: httpcore shields its connection cleanup with an anyio scope,
        # which a native cancel pierces, leaving the connection open and marked active (the engine never
        # learns the client left) when this deadline and the caller's anyio one fire together
        with anyio.fail_after(remaining):
            return await anext(body, None)
    except (TimeoutError, httpx.TimeoutException):
        if callers_first:
            raise EngineTimeout(f"the request's deadline passed while engine {engine} was streaming") from None
        raise EngineTimeout(f"engine {engine} did not finish the stream before the deadline", engine=engine) from None
    except httpx.HTTPError as exc:
        raise EngineBadResponse(f"engine {engine} aborted the stream: {exc}", engine=engine) from exc


def stream_from_wav(result: SynthesisResult, deadline: float) -> EngineStream:
    """Present a finished v1 WAV as an EngineStream (the PCM is handed on in slices, always int16:
    api.py started with `-st int32` writes 32-bit PCM, and stream consumers expect 16-bit)."""
    info = parse_wav(result.wav)
    pcm = result.wav[info.data_offset : info.data_offset + info.data_size]
    if info.bits_per_sample == 32:
        pcm = pcm_32_to_16(pcm)

    async def slices() -> AsyncIterator[bytes]:
        for start in range(_V1_STREAM_SLICE, len(pcm), _V1_STREAM_SLICE):
            yield pcm[start : start + _V1_STREAM_SLICE]

    return EngineStream(
        result.engine, result.sample_rate, pcm[:_V1_STREAM_SLICE], slices(), deadline, result.warnings, live=False
    )


def pcm_32_to_16(pcm: bytes) -> bytes:
    """int32 LE PCM → int16 LE PCM (keep the top 16 bits; a trailing partial sample is dropped)."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 4], dtype="<i4")
    return (samples >> 16).astype("<i2").tobytes()
