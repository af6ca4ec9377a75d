"""ASGI responses that fail the way the real engines fail: bodies cut off after a 200.

The real engines report errors inside a streaming generator by raising after the headers went out;
uvicorn then closes the connection without the terminating chunk, and the client sees "200 OK" followed
by "response ended prematurely" (engine-protocol.md §3.5). Here the same wire result comes from
returning without completing the response (uvicorn closes the transport), which avoids a traceback per
injected fault while keeping the bytes identical.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("gateway.cpu_engine")


class StreamAborted(Exception):
    """Raised by a body iterator to cut the response off here (the engine-side error text is the message)."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone (the request body, if any, was already consumed by the handler)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EngineStream(StreamingResponse):
    """A chunked 200 whose body may end in an abort, and which owns engine resources until it ends.

    `on_close` runs exactly once when the body is finished, aborted, or the client disconnected; the
    engine uses it to release the one-at-a-time lock, so a stream holds the lock for its whole life.
    A disconnect is noticed while waiting for the next chunk: the pending synthesis step finishes
    (worker threads cannot be interrupted) and the rest is skipped, like the engine's generator.
    """

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str, on_close: Callable[[], None]) -> None:
        super().__init__(chunks, media_type=media_type)
        self._chunks = chunks
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            completed = False
            async with anyio.create_task_group() as group:

                async def cancel_on_disconnect() -> None:
                    await wait_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(cancel_on_disconnect)
                completed = await self._pump(send)
                group.cancel_scope.cancel()
            if completed:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await self._chunks.aclose()  # type: ignore[attr-defined]
            self._on_close()

    async def _pump(self, send: Send) -> bool:
        try:
            async for chunk in self._chunks:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except StreamAborted as exc:
            log.warning("streaming body aborted after a 200: %s", exc)
            return False
        return True


class TruncatedResponse(Response):
    """Headers with the full Content-Length, about half of the body, then a dropped connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
        log.warning("fault 'truncate': dropped the connection after %d of %d bytes", len(self.body) // 2,
                    len(self.body))
