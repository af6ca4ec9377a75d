"""Conversion cost per output format for 10 s of 32 kHz speech-like audio (the engine's usual output).

Not a test: prints a markdown table (median of N runs) and writes bench/results/convert_cost.json.
Usage: python -m bench.convert_cost [-n 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gateway.audio.convert import OUTPUT_FORMATS, encode, resample
from gateway.audio.wav import pcm16_wav, wav_samples

SECONDS, RATE = 10.0, 32000


def speech_like(seconds: float, rate: int) -> np.ndarray:
    """Harmonics on a gliding pitch with a syllable envelope: codecs work about as hard as on speech."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 0.7 * t)) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 21) if k * 160 < rate / 2)
    noise = np.random.default_rng(0).normal(0, 0.02, len(t))  # breath/fricative-like broadband content
    signal = voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) + noise
    result: np.ndarray = (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)
    return result


def median_ms(work: Callable[[], Any], runs: int) -> tuple[float, Any]:
    work()  # warm-up: lazy imports (PyAV), codec initialisation
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5, help="runs per row (median reported)")
    args = parser.parse_args()
    samples = speech_like(SECONDS, RATE)
    engine_wav = pcm16_wav(samples, RATE)
    rows: list[dict[str, Any]] = []

    ms, _ = median_ms(lambda: wav_samples(engine_wav), args.n)
    rows.append({"step": "engine WAV → float32 (wav_samples)", "ms": ms, "bytes": len(engine_wav), "rate": RATE})
    for fmt in OUTPUT_FORMATS:
        ms, (data, rate) = median_ms(partial(encode, samples, RATE, fmt), args.n)
        rows.append({"step": f"encode {fmt}", "ms": ms, "bytes": len(data), "rate": rate})
    for dst in (48000, 24000):
        ms, out = median_ms(partial(resample, samples, RATE, dst), args.n)
        rows.append({"step": f"resample {RATE // 1000}→{dst // 1000} kHz", "ms": ms, "bytes": out.nbytes, "rate": dst})

    print(f"{SECONDS:g} s of {RATE} Hz mono, median of {args.n} runs\n")
    print("| step | ms | output bytes | output rate |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['step']} | {row['ms']:.1f} | {row['bytes']:,} | {row['rate']} |")
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    report = {"seconds": SECONDS, "rate": RATE, "runs": args.n, "rows": rows}
    (out_dir / "convert_cost.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
