"""Scale-out benchmark: gateway replicas sharing CPU engines through a real redis-server.

Prints (1) throughput with 1 and 3 replicas over the same engines against the ideal (engines ÷ mean engine
time, the engine time measured by direct calls in the same run), and (2) the latency that Redis adds per
request: sequential requests to one replica with GATEWAY_REDIS_URL against the same replica without it
(p50/p99 of each, the two alternating request by request, and of a direct engine call for reference), against
an `--instant` engine of their own.

    .venv/bin/python -m bench.scale --engines 4 --delay 0.2 --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._procs import engine, gateway, percentile  # noqa: E402
from tests.redis_support import running_redis  # noqa: E402
from tests.support import make_reference, tts_params  # noqa: E402

FIELDS = {"text": "A short line for the scale benchmark.", "text_language": "en", "prompt_text": "",
          "prompt_language": "en"}


async def clone(client: httpx.AsyncClient, url: str, reference: bytes) -> float:
    started = time.perf_counter()
    response = await client.post(f"{url}/v1/voice-clone", data=FIELDS,
                                 files={"audio": ("ref.wav", reference, "audio/wav")})
    response.raise_for_status()
    return time.perf_counter() - started


async def throughput(urls: list[str], reference: bytes, count: int, concurrency: int) -> float:
    """Requests per second for `count` clones, `concurrency` in flight, round-robin over `urls`."""
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, index: int) -> None:
        async with gate:
            await clone(client, urls[index % len(urls)], reference)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        await asyncio.gather(*(one(client, i) for i in range(min(concurrency, count))))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(count)))
        return count / (time.perf_counter() - started)


def alternating(urls: list[str], reference: bytes, count: int) -> list[list[float]]:
    """Sequential clones, one to each of `urls` in turn (so drift on a shared machine hits all alike)."""
    times: list[list[float]] = [[] for _ in urls]
    with httpx.Client(timeout=60) as client:
        for round_ in range(count + 20):
            for index, url in enumerate(urls):
                started = time.perf_counter()
                client.post(f"{url}/v1/voice-clone", data=FIELDS,
                            files={"audio": ("ref.wav", reference, "audio/wav")}).raise_for_status()
                if round_ >= 20:  # warm-up first
                    times[index].append(time.perf_counter() - started)
    return times


def direct_engine_seconds(url: str, ref: Path, count: int) -> list[float]:
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.get(f"{url}/tts", params=tts_params(ref)).raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def line(label: str, values: list[float]) -> str:
    return (f"{label:<34} p50 {statistics.median(values) * 1000:7.2f} ms   "
            f"p99 {percentile(values, 99) * 1000:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.2, help="engine seconds per request (--instant --delay)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--latency-requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, ExitStack() as stack:
        shared = Path(tmp)
        ref = make_reference(shared / "ref.wav")
        reference = ref.read_bytes()
        engines = [stack.enter_context(engine("--instant", "--delay", str(args.delay))) for _ in range(args.engines)]
        engine_times = direct_engine_seconds(engines[0], ref, 20)
        ideal = args.engines / statistics.mean(engine_times)
        print(f"engines: {args.engines}, mean engine time {statistics.mean(engine_times) * 1000:.1f} ms "
              f"(direct), ideal {ideal:.1f} req/s")
        redis = stack.enter_context(running_redis())
        env = {"GATEWAY_REDIS_URL": redis.url, "GATEWAY_MAX_QUEUE": "1000"}
        replicas = [stack.enter_context(gateway(engines, shared, GATEWAY_REPLICA_ID=f"r{i}", **env)) for i in range(3)]
        time.sleep(12)  # the first grant waits one lease after Redis starts empty (slots.lua, hold_until)
        for count in (1, 3):
            rate = asyncio.run(throughput(replicas[:count], reference, args.requests, args.engines * 3))
            print(f"{count} replica(s) x {args.engines} engines: {rate:6.1f} req/s = {rate / ideal:6.1%} of ideal")
        # latency: a fresh --instant engine that no other replica uses, so only the gateway's own work differs
        quick = stack.enter_context(engine("--instant"))
        plain = stack.enter_context(gateway([quick], shared))
        with_redis = stack.enter_context(gateway([quick], shared, GATEWAY_REPLICA_ID="lat", **env))
        direct = direct_engine_seconds(quick, ref, args.latency_requests)
        without, shared_slots = alternating([plain, with_redis], reference, args.latency_requests)
        print(line("direct engine call (--instant)", direct))
        print(line("1 replica, in-process slots", without))
        print(line("1 replica, Redis leases", shared_slots))
        added = statistics.median(shared_slots) - statistics.median(without)
        print(f"Redis adds {added * 1000:+.2f} ms p50 per request (acquire + release round trips)")


if __name__ == "__main__":
    main()
