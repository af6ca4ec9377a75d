"""A stream read's deadline and the upstream body's cleanup (gateway.engine.stream.next_piece).

httpcore closes the connection of a body cancelled mid-read inside an anyio shield. A deadline that fires
as a native asyncio cancel pierces that shield: the connection stays open and marked busy, so the engine
never learns that the gateway left and keeps the stream going (CI saw the engine's slot held 20 s past a
cut stream). The body below cleans up the way httpcore does, with a cleanup long enough for the read's own
deadline to fire in the middle of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from gateway.engine.stream import next_piece
from gateway.errors import EngineTimeout

pytestmark = pytest.mark.anyio


async def test_the_read_deadline_never_cuts_the_bodys_shielded_cleanup() -> None:
    cleaned = anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            await anyio.sleep(10)
            yield b"never"
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.3)  # httpcore: take the state lock, close the socket
                cleaned.set()
            raise

    loop = asyncio.get_running_loop()
    # the caller's own limit (the stream's time limit) fires first; the read's deadline 0.1 s into the cleanup
    with anyio.move_on_after(0.05), contextlib.suppress(EngineTimeout):
        await next_piece(body(), loop.time() + 0.15, "e0")
    assert cleaned.is_set()


async def test_a_read_past_its_deadline_names_the_engine() -> None:
    async def silent() -> AsyncIterator[bytes]:
        await anyio.sleep(10)
        yield b"never"

    loop = asyncio.get_running_loop()
    with pytest.raises(EngineTimeout, match="engine e0 did not finish the stream before the deadline") as info:
        await next_piece(silent(), loop.time() + 0.05, "e0")
    assert info.value.engine == "e0"
    # the caller's deadline, when it comes first, names no engine (its health is untouched)
    with pytest.raises(EngineTimeout, match="the request's deadline passed while engine e0") as info:
        await next_piece(silent(), loop.time() + 5, "e0", caller_deadline=loop.time() + 0.05)
    assert info.value.engine is None
