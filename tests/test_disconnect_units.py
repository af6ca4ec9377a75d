"""A client that leaves cancels its work (gateway.api.context.unless_disconnected), without cutting cleanups short.

The work is an engine call: httpcore closes a connection cancelled mid-read inside an anyio shield. A native
`task.cancel()` pierces that shield, leaving the connection open and the engine busy for nobody. Here the
client leaves while the work is already cleaning up (its own deadline fired); the cleanup must finish.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.requests import Request

from gateway.api.context import ClientDisconnected, unless_disconnected

pytestmark = pytest.mark.anyio

SCOPE = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}


def leaving_after(seconds: float) -> Request:
    """A request whose body was read; its client disconnects `seconds` later."""

    async def receive() -> dict[str, Any]:
        await anyio.sleep(seconds)
        return {"type": "http.disconnect"}

    return Request(SCOPE, receive)


async def test_a_client_leaving_mid_cleanup_waits_for_the_cleanup() -> None:
    cleaned = anyio.Event()

    async def engine_call() -> str:
        try:
            with anyio.fail_after(0.05):  # the read's deadline fires first ...
                await anyio.sleep(10)
        except TimeoutError:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.3)  # ... then httpcore closes the connection; the client leaves meanwhile
                cleaned.set()
            raise
        return "never"

    with pytest.raises(ClientDisconnected):
        await unless_disconnected(leaving_after(0.1), engine_call())
    assert cleaned.is_set()


async def test_the_works_result_and_errors_pass_through_unchanged() -> None:
    async def answer() -> str:
        await anyio.sleep(0.01)
        return "audio"

    async def fail() -> str:
        await anyio.sleep(0.01)
        raise ValueError("engine said no")

    assert await unless_disconnected(leaving_after(10), answer()) == "audio"
    with pytest.raises(ValueError, match="engine said no"):  # not wrapped in an ExceptionGroup
        await unless_disconnected(leaving_after(10), fail())


async def test_a_client_leaving_while_queued_cancels_the_wait() -> None:
    with anyio.fail_after(5), pytest.raises(ClientDisconnected):
        await unless_disconnected(leaving_after(0.05), anyio.sleep_forever())
