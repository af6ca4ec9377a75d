"""Dubbing-job benchmark: a 100-line job on 3 CPU engines, with interactive requests arriving meanwhile.

Prints the job's wall time against the ideal (every engine busy all the time: the sum of the engine
times of everything that ran, job segments and interactive requests, divided by the engines), and the
queue wait of the interactive requests (p50/p99) against the mean engine time: interactive requests go
before queued job segments, so they should wait at most about one engine time (the running segment).

    .venv/bin/python -m bench.dub --lines 100 --engines 3
    .venv/bin/python -m bench.dub --instant-delay 0.5   # engines that sleep their "GPU time"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._procs import engine, gateway, percentile  # noqa: E402
from tests.support import make_reference  # noqa: E402

SENTENCE = ("the river runs past the old mill while children laugh and the baker sells warm bread to "
            "travellers who stop on their way north before the rain arrives in the valley")
WORDS = SENTENCE.split(" ")


def job_lines(count: int) -> list[dict[str, Any]]:
    """Lines of 5-12 words on 3.5 s slots, two speakers' worth of text (one voice: the bench measures flow)."""
    segments = []
    for i in range(count):
        words = WORDS[i % 7 : i % 7 + 5 + i % 8]
        start = i * 3.5
        segments.append({"id": f"l{i + 1}", "text": " ".join(words).capitalize() + ".", "language": "en",
                         "start": start, "end": start + 3.0})
    return segments


def interactive_client(url: str, voice: str, stop: threading.Event, gap: float, out: list[dict[str, float]]) -> None:
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            response = client.post(f"{url}/v1/voice-clone", json={
                "text": "A quick answer while the job runs.", "text_language": "en", "voice_id": voice})
            if response.status_code == 200:
                timings = response.json()["timings"]
                out.append({"queue_wait": timings["queue_wait"], "engine": timings["engine"]})
            stop.wait(gap)


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine_args = ["--instant", "--delay", str(args.instant_delay)] if args.instant_delay else []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        urls = [stack.enter_context(engine(*engine_args)) for _ in range(args.engines)]
        url = stack.enter_context(gateway(urls, Path(tmp) / "shared", GATEWAY_JOB_CONCURRENCY=str(args.concurrency)))
        reference = make_reference(Path(tmp) / "ref.wav", seconds=4.0).read_bytes()
        voice = httpx.post(f"{url}/v1/voices", data={"name": "bench", "prompt_text": "A reference.",
                                                     "prompt_language": "en"},
                           files={"audio": ("ref.wav", reference)}, timeout=60).json()["id"]
        interactive: list[dict[str, float]] = []
        stop = threading.Event()
        started = time.monotonic()
        submitted = httpx.post(f"{url}/v1/jobs", json={"voice": voice, "segments": job_lines(args.lines)},
                               timeout=60).json()
        client = threading.Thread(target=interactive_client, args=(url, voice, stop, args.gap, interactive))
        client.start()
        while (job := httpx.get(f"{url}/v1/jobs/{submitted['id']}", timeout=30).json())["status"] not in (
            "done", "failed", "cancelled"):
            time.sleep(0.1)
        wall = time.monotonic() - started
        stop.set()
        client.join()
    segments = job["segments"]
    job_engine = sum(s["engine_seconds"] or 0.0 for s in segments)
    during = interactive[:-1] if len(interactive) > 1 else interactive  # the last may have started after the job
    busy = job_engine + sum(r["engine"] for r in during)
    ideal = busy / args.engines
    mean_engine = job_engine / max(1, len(segments))
    waits = [r["queue_wait"] for r in during]
    timing = [s["timing"] for s in segments if s.get("timing")]
    return {
        "lines": args.lines, "engines": args.engines, "job_concurrency": args.concurrency,
        "engine": f"--instant --delay {args.instant_delay}" if args.instant_delay else "CPU synthesis",
        "status": job["status"], "done": job["progress"]["done"],
        "wall_seconds": round(wall, 2), "ideal_seconds": round(ideal, 2), "efficiency": round(ideal / wall, 4),
        "mean_engine_seconds": round(mean_engine, 3),
        "interactive_requests": len(waits),
        "interactive_queue_wait_p50": round(statistics.median(waits), 3) if waits else None,
        "interactive_queue_wait_p99": round(percentile(waits, 99), 3) if waits else None,
        "within_tolerance": sum(1 for t in timing if t.get("within_tolerance")), "targeted": len(timing),
        "methods": {m: sum(1 for t in timing if t.get("method") == m) for m in {t.get("method") for t in timing}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="GATEWAY_JOB_CONCURRENCY")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between interactive requests")
    parser.add_argument("--instant-delay", type=float, default=0.0, help="instant engines sleeping this long")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "dub.json")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    print(f"\njob: {result['done']}/{result['lines']} lines in {result['wall_seconds']} s, ideal "
          f"{result['ideal_seconds']} s → {100 * result['efficiency']:.1f} % of ideal (target ≥ 95 %)")
    print(f"interactive queue wait p50 {result['interactive_queue_wait_p50']} s, p99 "
          f"{result['interactive_queue_wait_p99']} s; mean engine time {result['mean_engine_seconds']} s "
          "(target p50 ≤ one engine time)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
