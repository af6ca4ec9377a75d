"""Convert engine output (float32 mono) to the format a client asked for.

soundfile (bundled libsndfile 1.2.2) writes wav/flac/mp3/Ogg Opus; AAC needs ffmpeg's encoder, which
PyAV's wheels bundle, so it is imported lazily and offered only when PyAV is installed.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from gateway.audio.wav import pcm16_wav, to_pcm16
from gateway.errors import BadRequest

OUTPUT_FORMATS: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg Opus
    "flac": "audio/flac",
    "aac": "audio/aac",  # ADTS AAC, via PyAV (imported on first use: it loads the ffmpeg libraries)
    "pcm": "audio/pcm",  # raw int16 little-endian mono, no header
}

# Rates each codec can carry; encode() picks the nearest allowed rate at or above the requested one.
_MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_ALLOWED_RATES: dict[str, tuple[int, ...]] = {
    "opus": (8000, 12000, 16000, 24000, 48000),
    "mp3": _MPEG_RATES,
    "aac": _MPEG_RATES,
}
MIN_TARGET_RATE = 8000
MAX_TARGET_RATE = 192_000
# libsndfile 1.2.2 segfaults when one write encodes ~60 s of Ogg Vorbis at 48 kHz (DESIGN §9); every
# compressed format is written in blocks of at most this long, which costs nothing measurable.
MAX_SECONDS_PER_WRITE = 10
AAC_BIT_RATE = 96_000  # mono speech; the engine's own AAC uses 192k for what is usually the same mono signal

_SOUNDFILE_FORMATS: dict[str, tuple[str, str]] = {
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),  # libsndfile's default: LAME VBR
    "opus": ("OGG", "OPUS"),
}


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling with soxr (HQ); returns the input unchanged when the rates match."""
    if src_rate == dst_rate:
        return samples
    resampled: np.ndarray = soxr.resample(np.asarray(samples, dtype=np.float32), src_rate, dst_rate)
    return resampled


def _output_rate(fmt: str, requested: int) -> int:
    allowed = _ALLOWED_RATES.get(fmt)
    if allowed is None:
        return requested
    return next((rate for rate in allowed if rate >= requested), allowed[-1])


def _mono_float32(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {array.shape}")
    # libsndfile converts float to integer PCM without clipping (values past full scale would wrap).
    clipped: np.ndarray = np.clip(array, -1.0, 1.0)
    return clipped


def _encode_soundfile(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    major, subtype = _SOUNDFILE_FORMATS[fmt]
    buffer = io.BytesIO()
    block = MAX_SECONDS_PER_WRITE * rate
    with sf.SoundFile(buffer, "w", samplerate=rate, channels=1, format=major, subtype=subtype) as out:
        for start in range(0, len(samples), block):
            out.write(samples[start : start + block])
    return buffer.getvalue()


def _encode_aac(samples: np.ndarray, rate: int) -> bytes:
    import av  # lazy: loading ffmpeg's libraries costs start-up time that only AAC requests should pay

    buffer = io.BytesIO()
    container: Any = av.open(buffer, mode="w", format="adts")
    with container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        stream.bit_rate = AAC_BIT_RATE
        if len(samples):
            # One frame for the whole clip: PyAV re-frames it into the encoder's 1024-sample frames.
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = 0
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def encode(
    samples: np.ndarray, sample_rate: int, fmt: str, *, target_rate: int | None = None
) -> tuple[bytes, int]:
    """Float mono samples → (bytes in `fmt`, actual output rate).

    The output rate is `target_rate` (default: the source rate), raised to the nearest rate the codec
    supports (Opus: 8/12/16/24/48 kHz; MP3/AAC: the MPEG rates up to 48 kHz).
    """
    if fmt not in OUTPUT_FORMATS:
        raise BadRequest(
            f"unsupported output format {fmt!r}; supported: {', '.join(OUTPUT_FORMATS)}",
            code="unsupported_format",
        )
    requested = sample_rate if target_rate is None else target_rate
    if not MIN_TARGET_RATE <= requested <= MAX_TARGET_RATE:
        raise BadRequest(
            f"sample rate {requested} Hz is outside {MIN_TARGET_RATE}–{MAX_TARGET_RATE} Hz",
            code="invalid_sample_rate",
        )
    rate = _output_rate(fmt, requested)
    mono = resample(_mono_float32(samples), sample_rate, rate)
    if fmt == "wav":
        return pcm16_wav(mono, rate), rate
    if fmt == "pcm":
        return to_pcm16(mono).tobytes(), rate
    if fmt == "aac":
        return _encode_aac(mono, rate), rate
    return _encode_soundfile(mono, rate, fmt), rate
