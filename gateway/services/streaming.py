"""Streaming answers: the engine's PCM is encoded as it arrives and sent on, never buffered as a whole clip.

The engine reader and the client writer are decoupled by a bounded buffer, so the engine's slot comes back
the moment the engine is done, however slowly the client reads; a client that makes no read progress for
`stream_stall_seconds` is dropped. Before the first byte an engine failure still fails over (the pool opens
the stream only once audio arrived); after it the body is cut, logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import AsyncExitStack, aclosing

import anyio
from anyio import CancelScope
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.audio.convert import check_output
from gateway.audio.encoders import StreamEncoder, stream_encoder
from gateway.auth.access import charge_audio
from gateway.engine.stream import EngineStream
from gateway.engine.types import SynthesisRequest
from gateway.errors import EngineError
from gateway.logs import RequestFacts
from gateway.services.context import Services

log = logging.getLogger("gateway.services.streaming")

#: Most bytes handed to the server in one send: a slow but steady reader completes each send well within the
#: stall limit, while a fast one still gets large writes.
SEND_BYTES = 64 * 1024


class ByteBuffer:
    """Encoded audio between the engine reader and the client writer, bounded in bytes: when it is full the
    reader waits (backpressure holds the engine, which is acceptable: the buffer holds minutes of speech)."""

    def __init__(self, limit: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._closed = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self.error: EngineError | None = None

    async def put(self, data: bytes) -> None:
        while self._size >= self._limit and not self._closed:
            self._room.clear()
            await self._room.wait()
        self._chunks.append(data)
        self._size += len(data)
        self._readable.set()

    def close(self, error: EngineError | None = None) -> None:
        """No more data; `error`: the engine failed after the first byte (the writer cuts the body)."""
        self._closed, self.error = True, error
        self._readable.set()
        self._room.set()

    async def take(self, most: int) -> bytes | None:
        """Up to `most` bytes (at least one whole chunk), or None once closed and empty."""
        while not self._chunks and not self._closed:
            self._readable.clear()
            await self._readable.wait()
        if not self._chunks:
            return None
        pieces = [self._chunks.popleft()]
        taken = len(pieces[0])
        while self._chunks and taken + len(self._chunks[0]) <= most:
            pieces.append(self._chunks.popleft())
            taken += len(pieces[-1])
        self._size -= taken
        self._room.set()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class OpenedStream:
    """An engine stream that has started: its encoder, the engine's identity, and an idempotent close."""

    def __init__(self, services: Services, stack: AsyncExitStack, stream: EngineStream, encoder: StreamEncoder,
                 started: float) -> None:
        self.rate = encoder.rate
        self.engine = stream.engine.id  # what clients see (X-Engine); the URL is for the log only
        self.engine_url = stream.engine.url
        self.attempts = stream.attempts
        self.services = services
        self._facts: RequestFacts | None = None
        self._stack = stack
        self._stream = stream
        self._encoder = encoder
        self._started = started

    def report_to(self, facts: RequestFacts) -> None:
        """Note the engine and queue time now, and the audio length and engine time once the stream ends."""
        facts.engine, facts.attempts = self.engine, self.attempts
        facts.queue_seconds = self._stream.queue_wait
        self._facts = facts

    async def produce(self, buffer: ByteBuffer) -> None:
        """Engine chunks → encoder → buffer. The engine is let go as soon as its stream ends, before the
        encoder's flush and whatever the client still has to read."""
        metrics = self.services.metrics
        encoder = self._encoder
        samples = 0
        first = True
        try:
            # closed here when cancelled (client gone), not left to the event loop's finalizer
            async with aclosing(self._stream.chunks()) as chunks:
                async for chunk in chunks:
                    samples += len(chunk) // 2
                    feed = encoder.feed
                    data = await anyio.to_thread.run_sync(feed, chunk) if encoder.costly else feed(chunk)
                    if data:
                        if first:
                            metrics.time_to_first_byte.observe(time.perf_counter() - self._started)
                            first = False
                        await buffer.put(data)
        except EngineError as exc:  # an abort or a deadline mid-body: the writer cuts the client's body
            await self.aclose()
            buffer.close(exc)
            return
        await self.aclose()
        tail = await anyio.to_thread.run_sync(encoder.finish) if encoder.costly else encoder.finish()
        if tail:
            await buffer.put(tail)
        metrics.audio_seconds.inc(samples / self._stream.sample_rate)
        if self._facts is not None:
            self._facts.audio_seconds = samples / self._stream.sample_rate
            # from the call to the last chunk, less the queue: the engine's time (this request's encoding included)
            self._facts.engine_seconds = time.perf_counter() - self._started - self._stream.queue_wait
        await charge_audio(samples / self._stream.sample_rate)
        buffer.close()

    async def aclose(self) -> None:
        """Release the engine slot and close the upstream response (safe to call more than once)."""
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()


class EngineAudioResponse(Response):
    """Streams an OpenedStream until the request's deadline, and always closes it.

    The engine reader runs in the request's task, the client writer beside it. A cut stream (engine failure
    after the 200, a client that stalls for `stream_stall_seconds`, the deadline `stream_deadline`) ends
    without its terminating chunk, so the client sees an aborted body; it is one warning line and one count
    of `gateway_stream_cuts{reason}`, not an ASGI traceback (uvicorn closes the connection and logs its
    one-line "ASGI callable returned without completing response.").
    """

    def __init__(self, opened: OpenedStream, *, media_type: str, headers: dict[str, str], deadline: float) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)  # no body: no content-length, so the server sends it chunked
        self._opened = opened
        self._deadline = deadline
        settings = opened.services.settings
        self._stall = settings.stream_stall_seconds
        self._buffer = ByteBuffer(settings.stream_buffer_bytes)
        self._cut: tuple[str, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self._deadline - time.monotonic()) as limit:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._write, send, group.cancel_scope)
                    group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                    await self._opened.produce(self._buffer)
            if limit.cancelled_caught:
                self._cut = ("deadline", "the stream time limit passed")
        finally:
            await self._opened.aclose()
        if self._cut is not None:
            reason, message = self._cut
            self._opened.services.metrics.stream_cuts.labels(reason=reason).inc()
            request_id = scope.get("state", {}).get("request_id", "-")
            level = logging.INFO if reason == "client" else logging.WARNING
            log.log(level, "stream cut after its 200 (request %s, engine %s (%s)): %s", request_id,
                    self._opened.engine, self._opened.engine_url, message)

    async def _write(self, send: Send, group: CancelScope) -> None:
        """Client writer: headers, then the buffer as it fills; ends the whole response when done or cut."""
        buffer = self._buffer
        if await self._send(send, {"type": "http.response.start", "status": 200, "headers": self.raw_headers}):
            while (data := await buffer.take(SEND_BYTES)) is not None:
                if not await self._send(send, {"type": "http.response.body", "body": data, "more_body": True}):
                    break
            else:
                if buffer.error is not None:
                    self._cut = ("engine", buffer.error.message)
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        group.cancel()

    async def _send(self, send: Send, message: Message) -> bool:
        """One send within the stall limit: a send only waits while the client is not reading."""
        with anyio.move_on_after(self._stall) as stalled:
            await send(message)
        if stalled.cancelled_caught:
            self._cut = ("stall", f"the client read nothing for {self._stall:g} s")
        return not stalled.cancelled_caught

    async def _watch_disconnect(self, receive: Receive, group: CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._cut = self._cut or ("client", "the client went away")
        group.cancel()


async def open_stream(
    services: Services,
    request: SynthesisRequest,
    fmt: str,
    *,
    target_rate: int | None,
    deadline: float,
) -> OpenedStream:
    """Queue, pick an engine and wait for its stream to start, all before `deadline` (`stream_deadline`).

    Everything that can still become a clean JSON error (queue full, no engine, the engine refusing before its
    first byte, the deadline already past) happens here, before the HTTP response starts.
    """
    if target_rate is not None:
        check_output(fmt, target_rate)
    started = time.perf_counter()
    stack = AsyncExitStack()
    try:
        timeout = deadline - time.monotonic()  # ≤ 0: the pool answers with an EngineTimeout (504) at once
        stream = await stack.enter_async_context(services.pool.stream(request, timeout=timeout))
        rate = check_output(fmt, target_rate or stream.sample_rate)
        encoder = stream_encoder(fmt, stream.sample_rate, rate)
    except BaseException:
        await stack.aclose()
        raise
    return OpenedStream(services, stack, stream, encoder, started)


def stream_deadline(services: Services, timeout: float | None, arrived: float) -> float:
    """When a streamed answer must be over (time.monotonic()): the client's deadline (`X-Request-Timeout`),
    else the gateway's cap, counted from the request's arrival, so reading the upload, the queue wait and
    the stream all come out of one budget (a stuck client cannot hold a slot for queue wait + limit)."""
    cap = services.settings.max_request_seconds
    return arrived + (min(timeout, cap) if timeout else cap)
