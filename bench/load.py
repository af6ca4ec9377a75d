"""Load benchmark for the engine pool: N requests at concurrency C over K CPU engines with `--delay D`.

Drives `EnginePool` directly (the engine layer alone, no HTTP front), against real engine processes.
Prints throughput against the theoretical K / mean engine time, the status histogram, lost requests
(must be 0: every request gets an answer), queue-wait percentiles and, from each engine's `/_stats`,
the most requests it ever had in flight (must be 1). Writes the same as JSON with `--json PATH`.

Then the liveness check under saturation: a gateway process in front of K `--instant --delay 1` engines (GPU
time slept, not computed on the gateway's cores), kept saturated
(every engine busy and at least `--min-queued` requests waiting) by clients that resubmit as soon as they
are answered, while `/healthz` is probed one call at a time: its p50/p99 show whether the event loop stays
free for the orchestrator's liveness probe when the gateway is at its busiest.

    .venv/bin/python bench/load.py --requests 60 --concurrency 12 --engines 3 --delay 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._procs import gateway  # noqa: E402
from gateway.engine.pool import EnginePool  # noqa: E402
from gateway.engine.types import SynthesisRequest, SynthesisResult  # noqa: E402
from gateway.errors import GatewayError  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.support import make_reference, running_engine  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, twice."


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def drive(
    settings: Settings,
    req: SynthesisRequest,
    count: int,
    concurrency: int,
    kill: Callable[[], None] | None,
    kill_after: float,
) -> dict[str, Any]:
    pool = EnginePool(settings)
    await pool.start()
    outcomes: list[SynthesisResult | GatewayError | BaseException] = []
    todo = iter(range(count))

    async def worker() -> None:
        for _ in todo:
            try:
                outcomes.append(await pool.synthesize(req))
            except GatewayError as exc:
                outcomes.append(exc)
            except Exception as exc:  # anything else is a lost request
                outcomes.append(exc)

    async def killer() -> None:
        if kill is not None:
            await asyncio.sleep(kill_after)
            await asyncio.to_thread(kill)

    started = time.monotonic()
    try:
        await asyncio.gather(killer(), *(worker() for _ in range(concurrency)))
    finally:
        wall = time.monotonic() - started
        await pool.close()
    results = [o for o in outcomes if isinstance(o, SynthesisResult)]
    statuses = Counter(200 if isinstance(o, SynthesisResult) else getattr(o, "status", "lost") for o in outcomes)
    return {"wall": wall, "results": results, "statuses": statuses, "answered": len(outcomes)}


async def healthz_under_saturation(
    gateway_url: str, reference: bytes, clients: int, min_queued: int, probes: int
) -> dict[str, Any]:
    """Keep `clients` clone requests outstanding; once the queue holds `min_queued`, time `probes` /healthz calls."""
    stop = asyncio.Event()
    statuses: Counter[int] = Counter()
    form = {"text": TEXT, "text_language": "en", "prompt_text": "The reference transcript.", "prompt_language": "en"}
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=300, limits=limits) as http:

        async def client() -> None:
            while not stop.is_set():
                files = {"audio": ("ref.wav", reference, "audio/wav")}
                statuses[(await http.post("/v1/voice-clone", data=form, files=files)).status_code] += 1

        async def depth() -> tuple[int, int]:
            status = (await http.get("/readyz")).json()
            return status["queue_depth"], status["free_slots"]

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        try:
            deadline = time.monotonic() + 60
            while (await depth())[0] < min_queued:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the queue never reached {min_queued} requests")
                await asyncio.sleep(0.05)
            depth_before = await depth()
            latencies = []
            for _ in range(probes):
                started = time.perf_counter()
                (await http.get("/healthz")).raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.01)
            depth_after = await depth()
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "healthz_probes": probes,
        "healthz_p50_ms": round(percentile(latencies, 50), 3),
        "healthz_p99_ms": round(percentile(latencies, 99), 3),
        "healthz_max_ms": round(max(latencies), 3),
        "queue_depth_before_after": [depth_before[0], depth_after[0]],
        "free_slots_before_after": [depth_before[1], depth_after[1]],
        "clone_statuses_meanwhile": dict(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", "-n", type=int, default=60)
    parser.add_argument("--concurrency", "-c", type=int, default=12)
    parser.add_argument("--engines", "-k", type=int, default=3)
    parser.add_argument("--delay", "-d", type=float, default=0.3, help="emulated GPU seconds per request")
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--text", default=TEXT, help="text to synthesize (its length drives CPU time)")
    parser.add_argument("--kill-after", type=float, help="SIGKILL the first engine this many seconds in")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--saturating-clients", type=int, default=40, help="outstanding clones while /healthz is timed")
    parser.add_argument("--min-queued", type=int, default=32, help="queue depth to reach before timing /healthz")
    parser.add_argument("--healthz-probes", type=int, default=300, help="sequential /healthz calls (0: skip)")
    args = parser.parse_args()

    with ExitStack() as stack:
        engines = [
            stack.enter_context(running_engine("--debug-routes", "--delay", str(args.delay)))
            for _ in range(args.engines)
        ]
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-load-")))
        reference = make_reference(workdir / "ref.wav", seconds=4.0)
        req = SynthesisRequest(
            text=TEXT,
            text_language="en",
            reference_path=str(reference),
            prompt_text="The reference transcript.",
            prompt_language="en",
        )
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, engines=[e.url for e in engines], max_queue=args.max_queue, probe_interval=1.0
        )
        kill = engines[0].kill if args.kill_after is not None else None
        run = asyncio.run(drive(settings, req, args.requests, args.concurrency, kill, args.kill_after or 0.0))
        alive = [e for e in engines if e.proc.poll() is None]
        max_in_flight = [httpx.get(f"{e.url}/_stats", timeout=5).json()["max_in_flight"] for e in alive]
        saturated: dict[str, Any] = {}
        if args.healthz_probes:
            # engines that sleep their "GPU time" (--instant --delay): a GPU engine does not eat the gateway's
            # CPU, and CPU synthesis on these 2 cores would measure the scheduler, not the gateway's event loop
            busy = [stack.enter_context(running_engine("--instant", "--delay", "1.0")) for _ in range(args.engines)]
            shared = workdir / "shared"
            url = stack.enter_context(gateway([e.url for e in busy], shared, GATEWAY_MAX_QUEUE="256"))
            saturated = asyncio.run(healthz_under_saturation(
                url, reference.read_bytes(), args.saturating_clients, args.min_queued, args.healthz_probes
            ))

    results: list[SynthesisResult] = run["results"]
    engine_seconds = [r.engine_seconds for r in results]
    waits = [r.queue_wait for r in results]
    mean_engine = statistics.fmean(engine_seconds) if engine_seconds else float("nan")
    theoretical = args.engines / mean_engine if engine_seconds else float("nan")
    throughput = len(results) / run["wall"]
    report = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "engines": args.engines,
        "delay": args.delay,
        "wall_seconds": round(run["wall"], 3),
        "throughput_rps": round(throughput, 3),
        "mean_engine_seconds": round(mean_engine, 3),
        "theoretical_rps": round(theoretical, 3),
        "efficiency": round(throughput / theoretical, 3) if engine_seconds else None,
        "statuses": {str(k): v for k, v in sorted(run["statuses"].items(), key=str)},
        "lost": args.requests - run["answered"] + run["statuses"].get("lost", 0),
        "retried": sum(1 for r in results if r.attempts > 1),
        "queue_wait_p50": round(percentile(waits, 50), 3),
        "queue_wait_p99": round(percentile(waits, 99), 3),
        "killed_engine_after": args.kill_after,
        "engine_max_in_flight": max_in_flight,
        **saturated,
    }
    rows = [(key, value) for key, value in report.items()]
    print("| metric | value |\n|---|---|")
    for key, value in rows:
        print(f"| {key} | {value} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
