"""What the render use case adds: time stretch CPU, result-cache file I/O, and a cache hit against a miss.

1. `time_stretch` (ffmpeg atempo via PyAV) on a 5 s, 32 kHz clip: CPU ms per factor (process time, median),
   and `fit_duration` as the gateway runs it (WAV decode + stretch + WAV encode).
2. ResultCache put / get of that clip (wall ms, median) in `--dir` (default: a temp dir under var/).
3. End to end: seeded `POST /v1/voice-clone` through a gateway subprocess in front of a CPU engine
   (`--instant` too: a free engine, so a miss costs only the gateway): miss (a new seed each) vs hit latency.
Not a test: prints markdown tables. Usage: python -m bench.render_cost [-n 9] [--dir PATH]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import soundfile as sf

from bench._procs import engine, gateway, percentile
from bench.convert_cost import RATE, SECONDS, cpu_ms, speech_like
from gateway.audio.stretch import time_stretch
from gateway.audio.wav import pcm16_wav
from gateway.services.render import DurationGoal, fit_duration
from gateway.services.result_cache import ResultCache, result_key

TEXT = "The quick brown fox jumps over the lazy dog."


def wall_ms(work: Callable[[], Any], runs: int) -> float:
    work()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def stretch_rows(runs: int) -> None:
    samples = speech_like(SECONDS, RATE)
    wav = pcm16_wav(samples, RATE)
    print(f"### time stretch, {SECONDS:g} s of {RATE} Hz mono (CPU ms, median of {runs})\n")
    print("| factor | stretch CPU ms | fit_duration CPU ms (decode + stretch + encode) | output s |")
    print("|---:|---:|---:|---:|")
    for factor in (0.8, 0.9, 1.1, 1.25):
        ms, out = cpu_ms(lambda f=factor: time_stretch(samples, RATE, f), runs)  # type: ignore[misc]
        goal = DurationGoal(target=SECONDS * factor, tolerance=0.001)
        fit_ms, _ = cpu_ms(lambda g=goal: fit_duration(wav, g, 1.0), runs)  # type: ignore[misc]
        print(f"| {factor} | {ms:.1f} | {fit_ms:.1f} | {len(out) / RATE:.3f} |")
    print()


def cache_rows(runs: int, directory: Path) -> None:
    wav = pcm16_wav(speech_like(SECONDS, RATE), RATE)
    cache = ResultCache(directory, 1_000_000_000)
    cache.load()
    counter = iter(range(10**9))
    meta = {"timing": None, "warnings": []}
    put_ms = wall_ms(lambda: cache.put(result_key({"n": next(counter)}), wav, meta), runs)
    key = result_key({"n": "hit"})
    cache.put(key, wav, meta)
    get_ms = wall_ms(lambda: cache.get(key), runs)
    miss_ms = wall_ms(lambda: cache.get(result_key({"n": "absent"})), runs)
    print(f"### result cache, {len(wav):,} B WAV in {directory} (wall ms, median of {runs})\n")
    print(f"| put (2 atomic writes + fsync) | get hit (2 reads + touch) | get miss |\n|---:|---:|---:|\n"
          f"| {put_ms:.2f} | {get_ms:.2f} | {miss_ms:.2f} |\n")


def end_to_end(runs: int, shared: Path, *engine_args: str) -> dict[str, float]:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like(5.0, RATE), RATE, format="WAV", subtype="PCM_16")
    reference = buffer.getvalue()
    with engine(*engine_args) as engine_url, gateway([engine_url], shared) as url, httpx.Client(timeout=120) as client:

        def call(seed: int) -> float:
            started = time.perf_counter()
            response = client.post(f"{url}/v1/voice-clone", files={"audio": ("r.wav", reference)},
                                   data={"text": TEXT, "text_language": "en", "prompt_language": "en",
                                         "seed": str(seed)})
            response.raise_for_status()
            assert response.headers["x-cache"] in ("hit", "miss")
            return (time.perf_counter() - started) * 1000

        call(10_000)  # warm-up: reference intake, engine model, connections
        misses = [call(seed) for seed in range(1, runs + 1)]
        hits = [call(seed) for seed in range(1, runs + 1)]
    return {"miss_p50": statistics.median(misses), "miss_p90": percentile(misses, 90),
            "hit_p50": statistics.median(hits), "hit_p90": percentile(hits, 90)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=9, help="runs per row (median reported)")
    parser.add_argument("--dir", type=Path, default=None, help="where the cache files go (default: under var/)")
    args = parser.parse_args()
    stretch_rows(args.n)
    Path("var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir="var", prefix="bench-render-") as temp:
        cache_rows(args.n, args.dir or Path(temp) / "cache")
        print(f"### seeded POST /v1/voice-clone, 5 s reference, \"{TEXT}\" (wall ms, {args.n} each)\n")
        print("| engine | miss p50 | miss p90 | hit p50 | hit p90 |\n|---|---:|---:|---:|---:|")
        for label, engine_args in (("CPU engine", ()), ("CPU engine --instant", ("--instant",))):
            row = end_to_end(args.n, Path(temp) / label.replace(" ", "_"), *engine_args)
            print(f"| {label} | {row['miss_p50']:.1f} | {row['miss_p90']:.1f} | {row['hit_p50']:.1f} |"
                  f" {row['hit_p90']:.1f} |")


if __name__ == "__main__":
    main()
