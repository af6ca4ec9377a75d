"""What a per-key limit check costs a request: the in-process limiter vs the Redis one (a local redis-server).

One check is what the auth middleware does per request of a key with an rpm and a concurrency limit:
take_request + enter + leave. It reports p50/p99 microseconds per check for MemoryLimiter and RedisLimiter
(over loopback, so the Redis figure is mostly three round trips), and a key without limits on the Redis
limiter (no Redis call at all). Not a test: it prints figures.

    python -m bench.limits [-n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time

from bench._procs import percentile
from gateway.auth.keys import Limits
from gateway.auth.limits import Limiter, MemoryLimiter
from gateway.auth.redis_limits import RedisLimiter
from gateway.coord.link import RedisLink
from gateway.settings import Settings


async def _checks(limiter: Limiter, limits: Limits, n: int) -> list[float]:
    times = []
    for i in range(n):
        key = f"k{i % 50}"
        started = time.perf_counter()
        await limiter.take_request(key, limits)
        slot = await limiter.enter(key, limits)
        await limiter.leave(key, slot.ticket)
        times.append((time.perf_counter() - started) * 1e6)
    return times


def _report(name: str, times: list[float]) -> None:
    print(f"{name:<34} p50 {percentile(times, 50):8.1f} us   p99 {percentile(times, 99):8.1f} us")


async def _run(n: int, port: int) -> None:
    limited = Limits(rpm=10**9, concurrency=1000)
    _report("memory limiter, limited key", await _checks(MemoryLimiter(), limited, n))
    settings = Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{port}/0")  # type: ignore[call-arg]
    link = RedisLink(settings)
    limiter = RedisLimiter(link, settings.lease_seconds)
    await _checks(limiter, limited, 200)  # connections and scripts loaded
    _report("redis limiter, limited key", await _checks(limiter, limited, n))
    _report("redis limiter, key without limits", await _checks(limiter, Limits(), n))
    await link.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as directory:
        server = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                                   "--bind", "127.0.0.1", "--save", "", "--dir", directory],
                                  stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            asyncio.run(_run(args.n, port))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
