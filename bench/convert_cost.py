"""Conversion cost per output format for a 5 s clip of 32 kHz speech-like audio (the engine's usual output).

CPU milliseconds (process time, median of N runs) and output size, for the whole clip (`encode`) and for the
same clip streamed in 1 s engine chunks (`stream_encoder`), plus the old libsndfile mp3 (LAME VBR default)
for comparison. Not a test: prints a markdown table and writes bench/results/convert_cost.json.
Usage: python -m bench.convert_cost [-n 9]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf

from gateway.audio.convert import OUTPUT_FORMATS, encode
from gateway.audio.encoders import CODECS, stream_encoder
from gateway.audio.wav import pcm16_wav, to_pcm16, wav_samples

SECONDS, RATE = 5.0, 32000


def speech_like(seconds: float, rate: int) -> np.ndarray:
    """Harmonics on a gliding pitch with a syllable envelope: codecs work about as hard as on speech."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 0.7 * t)) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 21) if k * 160 < rate / 2)
    noise = np.random.default_rng(0).normal(0, 0.02, len(t))  # breath/fricative-like broadband content
    signal = voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) + noise
    result: np.ndarray = (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)
    return result


def cpu_ms(work: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median CPU time of `work` in this process (not wall time: other processes share the cores)."""
    work()  # warm-up: codec initialisation
    times, result = [], None
    for _ in range(runs):
        started = time.process_time()
        result = work()
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times), result


def streamed(pcm: bytes, fmt: str) -> bytes:
    encoder = stream_encoder(fmt, RATE, encode(np.zeros(1, np.float32), RATE, fmt)[1])
    second = 2 * RATE
    parts = [encoder.feed(pcm[start : start + second]) for start in range(0, len(pcm), second)]
    return b"".join([*parts, encoder.finish()])


def old_mp3(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, RATE, format="MP3", subtype="MPEG_LAYER_III")
    return buffer.getvalue()


def pyav_mp3(samples: np.ndarray) -> bytes:
    """The same mp3 settings through the LAME inside PyAV's ffmpeg (what the gateway does not use, and why)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream: Any = container.add_stream("libmp3lame", rate=RATE, options={"compression_level": "7"})
        stream.layout, stream.bit_rate = "mono", CODECS["mp3"].bit_rate
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts = RATE, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def settings_of(fmt: str) -> str:
    codec = CODECS.get(fmt)
    if codec is None:
        return "PCM16"
    parts = [codec.encoder, f"{codec.bit_rate // 1000} kbps" if codec.bit_rate else ""]
    parts += [f"{key}={value}" for key, value in codec.options.items()]
    return " ".join(part for part in parts if part)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=9, help="runs per row (median reported)")
    args = parser.parse_args()
    samples = speech_like(SECONDS, RATE)
    pcm = to_pcm16(samples).tobytes()
    engine_wav = pcm16_wav(samples, RATE)
    rows: list[dict[str, Any]] = []
    ms, _ = cpu_ms(lambda: wav_samples(engine_wav), args.n)
    rows.append({"format": "(engine WAV → float32)", "settings": "", "whole_ms": ms, "stream_ms": None,
                 "bytes": len(engine_wav), "kbps": None})
    for fmt in OUTPUT_FORMATS:
        whole_ms, (data, _) = cpu_ms(lambda f=fmt: encode(samples, RATE, f), args.n)  # type: ignore[misc]
        stream_ms, streamed_data = cpu_ms(lambda f=fmt: streamed(pcm, f), args.n)  # type: ignore[misc]
        rows.append({"format": fmt, "settings": settings_of(fmt), "whole_ms": whole_ms, "stream_ms": stream_ms,
                     "bytes": len(data), "stream_bytes": len(streamed_data),
                     "kbps": len(data) * 8 / SECONDS / 1000})
    ms, data = cpu_ms(lambda: pyav_mp3(samples), args.n)
    rows.append({"format": "mp3 (PyAV's libmp3lame, not used)", "settings": "same: 48 kbps quality 7",
                 "whole_ms": ms, "stream_ms": None, "bytes": len(data), "kbps": len(data) * 8 / SECONDS / 1000})
    ms, data = cpu_ms(lambda: old_mp3(samples), args.n)
    rows.append({"format": "mp3 (before: libsndfile)", "settings": "LAME VBR default", "whole_ms": ms,
                 "stream_ms": None, "bytes": len(data), "kbps": len(data) * 8 / SECONDS / 1000})

    print(f"{SECONDS:g} s of {RATE} Hz mono speech-like audio; CPU ms = process time, median of {args.n} runs;"
          " streamed = fed in 1 s chunks\n")
    print("| format | settings | CPU ms whole | CPU ms streamed | bytes | kbps |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        stream_ms = f"{row['stream_ms']:.1f}" if row["stream_ms"] is not None else ""
        kbps = f"{row['kbps']:.0f}" if row["kbps"] is not None else ""
        print(f"| {row['format']} | {row['settings']} | {row['whole_ms']:.1f} | {stream_ms} | {row['bytes']:,} |"
              f" {kbps} |")
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    report = {"seconds": SECONDS, "rate": RATE, "runs": args.n, "rows": rows}
    (out_dir / "convert_cost.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
