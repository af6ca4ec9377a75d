"""The replicas' Redis link against a real redis-server: once Redis answers again after a restart, no command
fails on a connection the restart left dead in the pool (each used to fail once, one 503 or one job-line retry
per pooled connection, seconds after Redis was back: under load a job line took three attempts)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.coord.link import RedisLink
from gateway.settings import Settings
from tests.redis_support import RedisServer
from tests.support import wait_until_async

pytestmark = pytest.mark.anyio

#: commands at once: the pool holds this many connections when Redis restarts
WIDTH = 6


async def side_by_side(link: RedisLink) -> list[object]:
    """WIDTH commands that each hold a connection for 0.2 s, so the pool opens one for each."""
    return await asyncio.gather(
        *(link.run(lambda: link.client.blpop(["nothing"], timeout=0.2)) for _ in range(WIDTH)),
        return_exceptions=True,
    )


async def test_after_a_restart_no_pooled_connection_fails_a_command(redis_server: RedisServer) -> None:
    link = RedisLink(Settings(redis_url=redis_server.url))
    try:
        assert await link.ping()
        assert await side_by_side(link) == [None] * WIDTH
        await asyncio.to_thread(redis_server.restart)
        await wait_until_async(link.ping, timeout=10)  # the first command after the restart finds Redis gone
        assert link.up
        assert await side_by_side(link) == [None] * WIDTH
    finally:
        await link.close()
