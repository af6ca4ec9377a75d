"""Share of CPU engine outputs the quality checks flag (gateway/audio/quality.py), with and without faults.

Renders a fixed set of texts (English, Chinese, Japanese, Korean, auto; one word to a paragraph, digits;
random seeds, speeds 0.8-1.25 and fragment intervals 0-1 s; three reference pitches) from a real CPU engine
(subprocess, real synthesizer, api_v2 mode 0), first clean, then with each audio fault injected (`mute`:
silence, `short`: truncation, `endless`: a runaway), and prints per condition how many outputs were flagged
and why. Target: every injected silence or truncation flagged, < 1 % of clean outputs flagged. The engine-level
faults `silence` (the 16 kHz placeholder GPT-SoVITS sends on an inference error) and `truncate` (a body cut
short) run too: the gateway's engine client refuses those answers itself (a 502 that the pool retries on another
engine), so they are counted as caught before the checks.
(`wrong_voice` is caught by min_similarity with a speaker encoder, not by these checks: not run here.)

Run: .venv/bin/python -m bench.quality_flags [--rounds N]   (about 2 min on 2 cores with the default)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import soundfile

from bench._procs import free_port, process
from gateway.audio.quality import QualityLimits, check
from gateway.audio.wav import is_silence_placeholder, parse_wav, wav_samples

TEXTS: list[tuple[str, str]] = [
    ("en", "Yes."),
    ("en", "Hello there!"),
    ("en", "The quick brown fox jumps over the lazy dog."),
    ("en", "One, two, three, four, five."),
    ("en", "Please call me back when you get this message, it is about the meeting on Friday."),
    ("en", "The old lighthouse keeper climbed the narrow stairs every evening, carrying a small lamp and a "
           "notebook full of weather reports. He watched the ships pass in the distance."),
    ("en", "Room 42 opens at 9:30."),
    ("zh", "你好。"),
    ("zh", "今天天气很好，我们去公园散步吧。"),
    ("zh", "今天早上我们一起去公园散步，看到很多人在湖边跑步和打太极拳。"),
    ("ja", "こんにちは、元気ですか。"),
    ("ja", "明日の会議は午後三時から始まります。"),
    ("ko", "안녕하세요, 만나서 반갑습니다."),
    ("auto", "This line is auto detected."),
]
FAULTS = ("mute", "short", "endless", "silence", "truncate")


def write_reference(path: Path, f0: float, rate: int = 32000, seconds: float = 5.0) -> str:
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1.0 + 0.01 * np.sin(2 * np.pi * 5.0 * t))) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 25))
    envelope = np.clip(np.sin(np.pi * 4.0 * t), 0.0, None) ** 0.6
    soundfile.write(str(path), 0.3 * voice * envelope / np.max(np.abs(voice)), rate)
    return str(path)


def render(
    client: httpx.Client, url: str, ref: str, language: str, text: str, rng: random.Random
) -> tuple[list[str], float | None]:
    """One mode-0 synthesis, checked: the problems found, and speech seconds / expected seconds."""
    speed = rng.choice((0.8, 1.0, 1.0, 1.25))
    body = {"text": text, "text_lang": "en" if language == "auto" else language, "ref_audio_path": ref,
            "prompt_lang": "en", "prompt_text": "A reference.", "seed": rng.randrange(2**31),
            "speed_factor": speed, "fragment_interval": rng.choice((0.0, 0.3, 0.3, 1.0))}
    try:
        response = client.post(f"{url}/tts", json=body)
    except httpx.RemoteProtocolError:  # the body ends before its Content-Length: the engine client's 502 too
        return ["cut short (502 before the checks)"], None
    response.raise_for_status()
    if is_silence_placeholder(response.content):
        return ["placeholder (502 before the checks)"], None
    try:
        parse_wav(response.content)
    except ValueError:
        return ["cut short (502 before the checks)"], None
    samples, rate = wav_samples(response.content)
    report = check(samples, rate, text, language, speed)
    ratio = report.speech_seconds / report.expected_seconds if report.expected_seconds else None
    return report.problems, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="passes over the texts for the clean outputs")
    flagged_section(parser.parse_args().rounds)


def flagged_section(rounds: int) -> None:
    """Print the table: one line per condition."""
    rng = random.Random(14)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "gateway.cpu_engine", "--port", str(port), "--debug-routes"]
    with tempfile.TemporaryDirectory(prefix="quality_flags_") as tmp, \
            process(command, f"{url}/openapi.json"), httpx.Client(timeout=120) as client:
        refs = [write_reference(Path(tmp) / f"ref{f0}.wav", f0) for f0 in (100.0, 150.0, 220.0)]
        conditions: list[tuple[str, int]] = [("clean", rounds), *[(fault, 1) for fault in FAULTS]]
        limits = QualityLimits()
        print(f"{'condition':<12} {'outputs':>7} {'flagged':>7} {'share':>7}  problems  (speech/expected "
              f"range; flagged below {limits.min_rate_ratio} or above {limits.max_rate_ratio} + 1 s)")
        for condition, rounds in conditions:
            client.post(f"{url}/_faults", json={"fault": None if condition == "clean" else condition})
            started = time.perf_counter()
            outputs, flagged, reasons = 0, 0, Counter[str]()
            missed: list[str] = []
            ratios: list[float] = []
            for _ in range(rounds):
                for language, text in TEXTS:
                    problems, ratio = render(client, url, rng.choice(refs), language, text, rng)
                    ratios.extend([ratio] if ratio is not None else [])
                    outputs += 1
                    flagged += bool(problems)
                    reasons.update(problems)
                    if bool(problems) != (condition != "clean"):
                        missed.append(f"{language}:{text[:24]!r}")
            share = flagged / outputs
            detail = ", ".join(f"{name} {count}" for name, count in reasons.most_common()) or "-"
            spread = f"speech/expected {min(ratios):.2f}-{max(ratios):.2f}; " if ratios else ""
            print(f"{condition:<12} {outputs:>7} {flagged:>7} {share:>7.1%}  {detail}  "
                  f"({spread}{time.perf_counter() - started:.0f} s)")
            if missed:
                print(f"{'':<12} {'wrongly flagged' if condition == 'clean' else 'missed'}: {'; '.join(missed[:6])}")


if __name__ == "__main__":
    main()
