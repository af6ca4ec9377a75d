"""Audio encoding and the engine's streaming framing, byte for byte (engine-protocol.md §2.5, §3.6).

Pure functions over numpy arrays: float32 mono in [-1, 1] in, bytes out. The engines convert to int16
before packing, so every format here carries 16-bit PCM (Vorbis encodes from it).
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterable, Iterator

import numpy as np
import soundfile as sf

MEDIA_TYPES: tuple[str, ...] = ("wav", "raw", "ogg", "aac")

#: The engines' error placeholder and "nothing to say" answer: 1 s of zeros at 16 kHz (§3.5).
PLACEHOLDER_RATE = 16000
PLACEHOLDER_SAMPLES = 16000

#: One semantic token of GPT-SoVITS is 40 ms of audio; streaming modes 2/3 cut chunks in tokens.
TOKEN_SECONDS = 0.04

# libsndfile 1.2.2 segfaults when one write call encodes ~60 s of Vorbis at 48 kHz (DESIGN.md §9).
_OGG_BLOCK_SECONDS = 10


def placeholder_silence() -> np.ndarray:
    return np.zeros(PLACEHOLDER_SAMPLES, dtype=np.float32)


def to_int16(samples: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = np.round(np.clip(samples, -1.0, 1.0) * 32767.0)
    return scaled.astype("<i2")


def encode_wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    """A complete RIFF WAV (mono); works for zero samples too (api.py's header-only answer)."""
    buffer = io.BytesIO()
    sf.write(buffer, to_int16(samples), rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def encode_raw(samples: np.ndarray) -> bytes:
    return to_int16(samples).tobytes()


def encode_ogg(samples: np.ndarray, rate: int) -> bytes:
    """One complete Ogg Vorbis stream, written in blocks of at most 10 s per call (see module note)."""
    buffer = io.BytesIO()
    pcm = to_int16(samples)
    block = _OGG_BLOCK_SECONDS * rate
    with sf.SoundFile(buffer, mode="w", samplerate=rate, channels=1, format="OGG", subtype="VORBIS") as out:
        for start in range(0, len(pcm), block):
            out.write(pcm[start : start + block])
    return buffer.getvalue()


def encode_aac(samples: np.ndarray, rate: int) -> bytes:
    """Fail exactly like the engine on a host without ffmpeg (its `subprocess.Popen(["ffmpeg", ...])`).

    The CPU engine never shells out to ffmpeg, so aac behaves as on an engine host without it:
    mode 0 answers 400 "tts failed" with this text, streaming aborts the body (§3.5).
    """
    raise FileNotFoundError(2, "No such file or directory", "ffmpeg")


def encode(media_type: str, samples: np.ndarray, rate: int) -> bytes:
    """Pack one piece of audio as api_v2's `pack_audio` does for `media_type`."""
    if media_type == "wav":
        return encode_wav(samples, rate)
    if media_type == "ogg":
        return encode_ogg(samples, rate)
    if media_type == "aac":
        return encode_aac(samples, rate)
    return encode_raw(samples)


def wav_stream_header(rate: int) -> bytes:
    """api_v2's first streaming chunk: a 44-byte WAV header whose size fields are 0 (RIFF size 36).

    Written with the `wave` module exactly like the engine's `wave_header_chunk`, so the bytes match.
    """
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as header:
        header.setnchannels(1)
        header.setsampwidth(2)
        header.setframerate(rate)
        header.writeframes(b"")
    return buffer.getvalue()


def chunk_samples(min_chunk_length: int, rate: int, speed_factor: float) -> int:
    """Samples in a streaming chunk of `min_chunk_length` tokens; faster speech makes chunks shorter."""
    tokens = max(1, min_chunk_length)
    speed = speed_factor if speed_factor > 0 else 1.0
    return max(1, round(tokens * TOKEN_SECONDS * rate / speed))


def fixed_pieces(segment: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Mode 3: chunks of exactly `size` samples, a shorter tail at the end of the segment."""
    for start in range(0, len(segment), size):
        yield segment[start : start + size]


def pause_pieces(segment: np.ndarray, size: int, rate: int) -> Iterator[np.ndarray]:
    """Mode 2: chunks of at least `size` samples that end at the quietest 10 ms frame within the next `size`.

    Mirrors the engine cutting "where the model predicts silence": boundaries land in pauses, so chunk
    lengths vary between one and two chunk sizes.
    """
    frame = max(1, rate // 100)
    start = 0
    while len(segment) - start > 2 * size:
        window = segment[start + size : start + 2 * size]
        frames = len(window) // frame
        energy = np.square(window[: frames * frame].astype(np.float64)).reshape(frames, frame).sum(axis=1)
        cut = start + size + int(np.argmin(energy)) * frame + frame
        yield segment[start:cut]
        start = cut
    if start < len(segment):
        yield segment[start:]


def streaming_pieces(
    segments: Iterable[np.ndarray], mode: int, rate: int, min_chunk_length: int, speed_factor: float
) -> Iterator[np.ndarray]:
    """Cut synthesized segments into the audio pieces of streaming mode 1, 2 or 3 (§3.4, §3.6)."""
    size = chunk_samples(min_chunk_length, rate, speed_factor)
    for segment in segments:
        if mode == 1:
            yield segment
        elif mode == 2:
            yield from pause_pieces(segment, size, rate)
        else:
            yield from fixed_pieces(segment, size)
