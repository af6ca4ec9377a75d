"""CPU engine synthesizer speed and pitch-following figures.

Prints the real-time factor (synthesis seconds / audio seconds, median of 5 runs) for a 60-word
English text and a 30-character Chinese text at 32 kHz, with and without reference adaptation, then
the median F0 of references at about 100, 150 and 220 Hz against the median F0 of the output.

Run: .venv/bin/python bench/cpu_engine_rtf.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from gateway.cpu_engine import adapt
from gateway.cpu_engine.synth import SynthesisParams, Synthesizer

ENGLISH_60_WORDS = (
    "The old lighthouse keeper climbed the narrow stairs every evening, carrying a small lamp and a "
    "notebook full of weather reports. He watched the ships pass in the distance, wrote down the wind "
    "and the waves, and sometimes sang quietly to himself. In the morning he walked along the beach, "
    "collecting shells for his grandchildren, who visited him every summer."
)
CHINESE_30_CHARS = "今天早上我们一起去公园散步，看到很多人在湖边跑步和打太极拳。"
RATE = 32000
RUNS = 5


def write_reference(path: Path, f0: float, rate: int = 32000, seconds: float = 5.0) -> str:
    """Harmonics of `f0` with 1 % vibrato and a 4 Hz syllable envelope (same recipe as the tests)."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1.0 + 0.01 * np.sin(2 * np.pi * 5.0 * t))) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 25))
    envelope = 0.1 + 0.45 * (1 - np.cos(2 * np.pi * 4.0 * t))
    soundfile.write(str(path), 0.3 * voice * envelope / np.max(np.abs(voice)), rate)
    return str(path)


def real_time_factor(synthesizer: Synthesizer, params: SynthesisParams) -> tuple[float, float]:
    """Median RTF over RUNS runs, and the audio length in seconds."""
    factors = []
    seconds = 0.0
    for _ in range(RUNS):
        start = time.perf_counter()
        audio = synthesizer.synthesize(params)
        elapsed = time.perf_counter() - start
        seconds = audio.size / params.output_rate
        factors.append(elapsed / seconds)
    return statistics.median(factors), seconds


def main() -> None:
    start = time.perf_counter()
    synthesizer = Synthesizer()
    print(f"Piper voice load: {time.perf_counter() - start:.2f} s")
    with tempfile.TemporaryDirectory() as folder:
        references = {hz: write_reference(Path(folder) / f"ref{hz}.wav", float(hz)) for hz in (100, 150, 220)}
        start = time.perf_counter()
        adapt.reference_pitch(references[220])
        print(f"reference analysis (5 s clip, uncached): {time.perf_counter() - start:.2f} s")
        texts = [("en", "English, 60 words", ENGLISH_60_WORDS), ("all_zh", "Chinese, 30 chars", CHINESE_30_CHARS)]
        for lang, _, text in texts:  # warm-up: espeak initialisation, ONNX first-run allocations
            synthesizer.synthesize(SynthesisParams(text, lang, None, RATE))

        print(f"\nReal-time factor at {RATE} Hz, median of {RUNS} runs (cut5, 0.3 s fragment interval):")
        print(f"  {'text':<20} {'audio s':>8} {'plain':>8} {'adapted (220 Hz ref)':>22}")
        for lang, label, text in texts:
            plain, seconds = real_time_factor(synthesizer, SynthesisParams(text, lang, None, RATE))
            adapted, _ = real_time_factor(synthesizer, SynthesisParams(text, lang, references[220], RATE))
            print(f"  {label:<20} {seconds:>8.1f} {plain:>8.3f} {adapted:>22.3f}")

        print("\nMedian F0 of the output against the reference (the engine's Praat analysis; seeds 1-3):")
        print(f"  {'text':<20} {'reference Hz':>13} {'output Hz':>30} {'error':>8}")
        for lang, label, text in texts:
            for path in references.values():
                reference = adapt.reference_pitch(path)
                assert reference is not None
                outputs = []
                for seed in (1, 2, 3):
                    audio = synthesizer.synthesize(SynthesisParams(text, lang, path, RATE, seed=seed))
                    outputs.append(adapt.median_f0(audio, RATE) or float("nan"))
                worst = max(outputs, key=lambda value: abs(value / reference.median_hz - 1.0))
                shown = " / ".join(f"{value:.1f}" for value in outputs)
                error = 100.0 * (worst / reference.median_hz - 1.0)
                print(f"  {label:<20} {reference.median_hz:>13.1f} {shown:>30} {error:>+7.1f}%")
            unadapted = synthesizer.synthesize(SynthesisParams(text, lang, None, RATE, seed=1))
            print(f"  {label:<20} {'(no reference)':>13} {adapt.median_f0(unadapted, RATE) or 0.0:>30.1f}")


if __name__ == "__main__":
    main()
