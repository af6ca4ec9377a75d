"""How closely the CPU engine's pitch follows real-speech references, and what the adaptation costs.

References are espeak-ng speech (tests/voice_refs.py: English and Mandarin, male and female, median F0
about 90, 120, 160, 207 and 260 Hz). For each one the engine's synthesizer speaks a sentence in the
reference's language (English by Piper, Chinese by espeak-ng) and the output's median F0 is measured
by Praat's cross-correlation tracker (tests/support.measured_median_f0; the engine uses its
autocorrelation one) over three seeds.
Then the real-time factor (synthesis seconds / audio seconds, median of RUNS alternating runs, 32 kHz
output) of the adapted path against plain synthesis in the same run, and of the adaptation alone: other
processes share the CPU, so only the ratio and the plain figure next to it compare between runs.

Run: .venv/bin/python bench/cpu_engine_pitch.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests` is not an installed package

from bench.cpu_engine_rtf import CHINESE_30_CHARS, ENGLISH_60_WORDS, RATE, RUNS  # noqa: E402
from gateway.cpu_engine import adapt  # noqa: E402
from gateway.cpu_engine.synth import SynthesisParams, Synthesizer  # noqa: E402
from tests.support import measured_median_f0  # noqa: E402
from tests.voice_refs import REFERENCES, write_voice_reference  # noqa: E402

TEXTS = {
    "en": "The gateway speaks with the voice of whoever recorded the reference. High or low, it should follow.",
    "zh": "网关用录制参考音频的人的声音说话，无论高低都应该跟随。",
}
SEEDS = (1, 2, 3)


def real_time_factors(synthesizer: Synthesizer, plain: SynthesisParams, adapted: SynthesisParams) -> tuple[float, ...]:
    """Median RTF of plain and adapted synthesis over RUNS alternating runs (so load changes hit both
    alike), the median cost of `adapt.adapt` alone per second of speech, and the audio length in seconds."""
    factors: dict[str, list[float]] = {"plain": [], "adapted": [], "adapt only": []}
    seconds = 0.0
    target = adapt.reference_pitch(str(adapted.ref_audio_path))
    speech = synthesizer.synthesize(replace(plain, output_rate=synthesizer.internal_rate, fragment_interval=0.0))
    for _ in range(RUNS):
        for name, params in (("plain", plain), ("adapted", adapted)):
            start = time.perf_counter()
            audio = synthesizer.synthesize(params)
            seconds = audio.size / params.output_rate
            factors[name].append((time.perf_counter() - start) / seconds)
        start = time.perf_counter()
        adapt.adapt(speech, synthesizer.internal_rate, target)
        factors["adapt only"].append((time.perf_counter() - start) * synthesizer.internal_rate / speech.size)
    return *(statistics.median(values) for values in factors.values()), seconds


def pitch_table(synthesizer: Synthesizer, folder: Path) -> list[Path]:
    print("Median F0 of the output against the reference (target: the engine's own estimate of the reference;")
    print(f"error: of the median over seeds {SEEDS}; worst: of the worst seed):")
    print(f"  {'reference':<16} {'ref Hz':>7} {'target':>7} {'output Hz per seed':>24} {'error':>7} {'worst':>7}")
    paths = []
    errors = []
    for reference in REFERENCES:
        path = write_voice_reference(folder, reference)
        paths.append(path)
        audio, rate = soundfile.read(str(path), dtype="float32")
        reference_hz = measured_median_f0(audio, rate)
        target = adapt.reference_pitch(str(path))  # what the engine aims at
        target_hz = target.median_hz if target else float("nan")
        outputs = []
        for seed in SEEDS:
            params = SynthesisParams(TEXTS[reference.lang], reference.lang, str(path), RATE, seed=seed)
            outputs.append(measured_median_f0(synthesizer.synthesize(params), RATE))
        shown = " / ".join(f"{value:.1f}" for value in outputs)
        error = 100.0 * (statistics.median(outputs) / reference_hz - 1.0)
        worst = max((100.0 * (value / reference_hz - 1.0) for value in outputs), key=abs)
        errors.append(abs(worst))
        name = reference.name
        print(f"  {name:<16} {reference_hz:>7.1f} {target_hz:>7.1f} {shown:>24} {error:>+6.1f}% {worst:>+6.1f}%")
    print(f"  largest |error| over all references and seeds: {max(errors):.1f}%")
    return paths


def main() -> None:
    synthesizer = Synthesizer()
    texts = [("en", "English, 60 words", ENGLISH_60_WORDS), ("all_zh", "Chinese, 30 chars", CHINESE_30_CHARS)]
    for lang, _, text in texts:  # warm-up: espeak initialisation, ONNX first-run allocations
        synthesizer.synthesize(SynthesisParams(text, lang, None, RATE))
    with tempfile.TemporaryDirectory(prefix="bench_pitch_") as folder:
        paths = pitch_table(synthesizer, Path(folder))
        female = next(p for p, r in zip(paths, REFERENCES, strict=True) if r.name == "en-female-207")
        adapt._reference_stats_cached.cache_clear()
        start = time.perf_counter()
        adapt.reference_pitch(str(female))
        print(f"\nreference analysis ({female.name}, uncached): {time.perf_counter() - start:.3f} s")
        print(f"\nReal-time factor at {RATE} Hz, median of {RUNS} runs (reference {female.name}):")
        print(f"  {'text':<20} {'audio s':>8} {'plain':>8} {'adapted':>8} {'adapted/plain':>14} {'adapt only':>11}")
        for lang, label, text in texts:
            plain = SynthesisParams(text, lang, None, RATE)
            plain_rtf, adapted_rtf, adapt_rtf, seconds = real_time_factors(
                synthesizer, plain, replace(plain, ref_audio_path=str(female))
            )
            ratio = adapted_rtf / plain_rtf
            rtfs = f"{plain_rtf:>8.3f} {adapted_rtf:>8.3f} {ratio:>14.2f} {adapt_rtf:>11.3f}"
            print(f"  {label:<20} {seconds:>8.1f} {rtfs}")


if __name__ == "__main__":
    main()
