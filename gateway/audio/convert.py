"""Convert engine output (float32 mono) to the format a client asked for, as a whole clip.

wav and pcm are written by hand; mp3, Ogg Opus, ADTS AAC and FLAC go through the same PyAV encoders as a
stream (gateway/audio/encoders.py), so a whole clip and a streamed one decode to the same length. libsndfile
is not used for encoding: it segfaults on long Ogg/Vorbis writes (DESIGN §9) and its Opus is ~4x slower.
"""

from __future__ import annotations

import numpy as np
import soxr

from gateway.audio.encoders import encode_clip, output_rate
from gateway.audio.wav import pcm16_wav, to_pcm16
from gateway.errors import BadRequest

OUTPUT_FORMATS: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg Opus
    "flac": "audio/flac",
    "aac": "audio/aac",  # ADTS AAC
    "pcm": "audio/pcm",  # raw int16 little-endian mono, no header
}

MIN_TARGET_RATE = 8000
MAX_TARGET_RATE = 192_000


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling with soxr (HQ); returns the input unchanged when the rates match."""
    if src_rate == dst_rate:
        return samples
    resampled: np.ndarray = soxr.resample(np.asarray(samples, dtype=np.float32), src_rate, dst_rate)
    return resampled


def check_output(fmt: str, requested: int) -> int:
    """Refuse an unknown format or an absurd rate (400); return the rate `fmt` will be written at."""
    if fmt not in OUTPUT_FORMATS:
        raise BadRequest(
            f"unsupported output format {fmt!r}; supported: {', '.join(OUTPUT_FORMATS)}",
            code="unsupported_format",
        )
    if not MIN_TARGET_RATE <= requested <= MAX_TARGET_RATE:
        raise BadRequest(
            f"sample rate {requested} Hz is outside {MIN_TARGET_RATE}–{MAX_TARGET_RATE} Hz",
            code="invalid_sample_rate",
        )
    return output_rate(fmt, requested)


def _mono_float32(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {array.shape}")
    # encoders convert float to integer PCM without clipping (values past full scale would wrap)
    clipped: np.ndarray = np.clip(array, -1.0, 1.0)
    return clipped


def encode(
    samples: np.ndarray, sample_rate: int, fmt: str, *, target_rate: int | None = None
) -> tuple[bytes, int]:
    """Float mono samples → (bytes in `fmt`, actual output rate).

    The output rate is `target_rate` (default: the source rate), raised to the nearest rate the codec
    supports (Opus: 8/12/16/24/48 kHz; MP3/AAC: the MPEG rates up to 48 kHz).
    """
    rate = check_output(fmt, sample_rate if target_rate is None else target_rate)
    mono = resample(_mono_float32(samples), sample_rate, rate)
    if fmt == "wav":
        return pcm16_wav(mono, rate), rate
    if fmt == "pcm":
        return to_pcm16(mono).tobytes(), rate
    return encode_clip(mono, rate, fmt), rate
