"""Speaker-embedding quality checks and what they cost (issue 14 item 6). Not a test: prints one markdown section
per measurement.

Embedding time: seconds of CPU (process time: every torch thread counts) and of wall clock per second of audio,
for each encoder, on speech-like clips of a few lengths, with one torch thread (as the gateway runs them) and
with torch's default, median of N runs after a warm-up. GE2E runs with
Resemblyzer's shipped weights; ECAPA-TDNN with SpeechBrain's spkrec-ecapa-voxceleb layout (1024 channels,
192-d) and random weights, which cost the same as trained ones. Needs the `quality` extra.
Check cost: CPU milliseconds of the always-on checks (gateway/audio/quality.check) on a 5 s clip at 32 kHz,
the median of 200 calls: paid on every whole clip served.
Flagged shares: bench/quality_flags.py (the share of CPU engine outputs the always-on checks flag, clean and
with each fault injected), printed second.
Usage: python -m bench.quality [-n 7] [--rounds 4] [--skip-embeddings] [--skip-flags]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.quality_flags import flagged_section
from gateway.speaker import ENCODER_RATE, SpeakerEncoder

CLIP_SECONDS = (3.0, 10.0, 30.0)
#: speechbrain/spkrec-ecapa-voxceleb's architecture (what an operator's GATEWAY_SPEAKER_MODEL_DIR would hold)
VOXCELEB_ECAPA = {"channels": [1024, 1024, 1024, 1024, 3072], "lin_neurons": 192}


def speech_like(seconds: float, f0: float = 120.0) -> np.ndarray:
    """Harmonics on a wobbling pitch under a syllable envelope with silent dips, 16 kHz mono float32."""
    t = np.arange(round(seconds * ENCODER_RATE)) / ENCODER_RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / ENCODER_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30) if k * f0 < 5000)
    syllables = np.clip(np.sin(np.pi * 4 * t), 0, None) ** 0.6
    signal = voiced * syllables + np.random.default_rng(0).normal(0, 0.003, len(t))
    clip: np.ndarray = (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)
    return clip


def load_encoders(workdir: Path) -> dict[str, tuple[SpeakerEncoder, float]]:
    """Each encoder and the seconds it took to load (the first one also pays for importing torch)."""
    import torch

    from gateway.speaker.ecapa import ECAPAEncoder, build_model, read_hyperparams
    from gateway.speaker.ge2e import GE2EEncoder, weights_path

    encoders: dict[str, tuple[SpeakerEncoder, float]] = {}
    weights = weights_path()
    if weights is None:
        raise SystemExit("resemblyzer is not installed: pip install --no-deps resemblyzer (see the Makefile)")
    started = time.perf_counter()
    encoders["ge2e"] = GE2EEncoder(weights), time.perf_counter() - started
    (workdir / "hyperparams.json").write_text(json.dumps(VOXCELEB_ECAPA))
    torch.save(build_model(read_hyperparams(workdir)).state_dict(), workdir / "embedding_model.ckpt")
    started = time.perf_counter()
    encoders["ecapa"] = ECAPAEncoder(workdir), time.perf_counter() - started
    return encoders


def embedding_time(encoder: SpeakerEncoder, seconds: float, runs: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per second of audio: medians of `runs` embeds after one warm-up."""
    clip = speech_like(seconds)
    encoder.embed(clip)
    cpu, wall = [], []
    for _ in range(runs):
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        encoder.embed(clip)
        cpu.append(time.process_time() - cpu_started)
        wall.append(time.perf_counter() - wall_started)
    return statistics.median(cpu) / seconds, statistics.median(wall) / seconds


def embedding_time_section(runs: int) -> str:
    """One row per encoder, clip length and torch thread count (the gateway embeds on one: gateway/speaker)."""
    import torch

    threads = sorted({1, torch.get_num_threads()})
    lines = [
        "## Embedding time per second of audio",
        "",
        f"median of {runs} runs, torch {torch.__version__}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the start",
        "",
        "| encoder | dim | load s | torch threads | clip s | CPU s per audio s | wall s per audio s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as workdir:
        for name, (encoder, load_seconds) in load_encoders(Path(workdir)).items():
            for count in threads:
                torch.set_num_threads(count)
                for seconds in CLIP_SECONDS:
                    cpu, wall = embedding_time(encoder, seconds, runs)
                    lines.append(f"| {name} | {encoder.dim} | {load_seconds:.2f} | {count} | {seconds:g} | "
                                 f"{cpu:.4f} | {wall:.4f} |")
    return "\n".join(lines)


def check_cost_section(calls: int = 200) -> str:
    """The always-on checks' CPU time on a 5 s clip at the engines' 32 kHz (median of `calls` after a warm-up)."""
    import soxr

    from gateway.audio.quality import check

    clip = soxr.resample(speech_like(5.0), ENCODER_RATE, 32000).astype(np.float32)
    text = "A sentence of about the length this clip would take to say out loud."
    check(clip, 32000, text, "en")
    times = []
    for _ in range(calls):
        started = time.process_time()
        check(clip, 32000, text, "en")
        times.append(time.process_time() - started)
    return (f"## Check cost\n\nquality checks on a 5 s clip at 32 kHz: {1000 * statistics.median(times):.2f} ms CPU "
            f"(median of {calls})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--runs", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=4, help="passes over the texts for the clean outputs")
    parser.add_argument("--skip-embeddings", action="store_true")
    parser.add_argument("--skip-flags", action="store_true")
    args = parser.parse_args()
    print(check_cost_section(), flush=True)
    if not args.skip_embeddings:
        print(embedding_time_section(args.runs), flush=True)
    if not args.skip_flags:
        print("\n## Outputs flagged by the quality checks\n", flush=True)
        flagged_section(args.rounds)


if __name__ == "__main__":
    main()
