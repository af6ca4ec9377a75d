"""`--instant`: a synthesizer that answers every request at once with one fixed, pre-rendered 5 s clip.

For benchmarks of the gateway: with the real CPU synthesizer a request costs seconds and the
gateway's millisecond overhead drowns in its noise. Everything around synthesis (routes, validation,
reference checks, the lock, faults, streaming framing) stays as it is; only the audio is canned.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from gateway.cpu_engine.framing import encode
from gateway.cpu_engine.synth import SynthesisParams

CLIP_SECONDS = 5.0


@lru_cache(maxsize=8)
def clip(rate: int) -> np.ndarray:
    """5 s of a voiced, syllable-paced harmonic tone at `rate` (speech-like levels, not silence)."""
    t = np.arange(int(CLIP_SECONDS * rate)) / rate
    f0 = 140.0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.25 * (0.55 - 0.45 * np.cos(2 * np.pi * 3 * t))
    audio: np.ndarray = (voiced * envelope).astype(np.float32)
    audio.flags.writeable = False  # shared by every request
    return audio


@lru_cache(maxsize=32)
def encoded(media_type: str, rate: int) -> bytes:
    """The clip packed as `media_type` (mode 0 body), encoded once per format and rate."""
    return encode(media_type, clip(rate), rate)


class InstantSynthesizer:
    """Drop-in for `Synthesizer`: one segment, the canned clip at the requested output rate."""

    last_adaptations: list[object] = []  # noqa: RUF012 - interface parity with Synthesizer (always empty)

    def segments(self, params: SynthesisParams) -> Iterator[np.ndarray]:
        yield clip(params.output_rate)

    def synthesize(self, params: SynthesisParams) -> np.ndarray:
        return clip(params.output_rate)
