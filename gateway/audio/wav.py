"""RIFF/WAVE PCM framing done by hand: strict parsing of engine answers, streaming headers, fast PCM16 I/O.

Engine answers are checked here rather than with libsndfile because libsndfile is lenient where the gateway
must not be: it silently accepts a body shorter than its data chunk (a truncated engine answer) and reads a
zero-size streaming header as an empty file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Size fields that mean "length unknown": the engine's streaming header writes 0, ffmpeg/sox write the maximum.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
_FORMAT_PCM = 0x0001
_FORMAT_EXTENSIBLE = 0xFFFE
_SUPPORTED_BITS = (8, 16, 24, 32)

# The engine's error placeholder (engine-protocol §3.5): 1 s of zeros at 16 kHz.
PLACEHOLDER_RATE = 16000
PLACEHOLDER_FRAMES = 16000
# Slack in case an engine build rounds the placeholder length differently.
PLACEHOLDER_FRAME_SLACK = 32

STREAMING_HEADER_SIZE = 44


@dataclass(frozen=True)
class WavInfo:
    """Where the PCM lives inside a WAV body and how to read it."""

    sample_rate: int
    channels: int
    bits_per_sample: int
    frames: int
    data_offset: int
    data_size: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


class _Header(NamedTuple):
    sample_rate: int
    channels: int
    bits_per_sample: int
    data_offset: int
    declared_data_size: int | None  # None when the header says "unknown length"


def _read_fmt(data: bytes, body: int, size: int) -> tuple[int, int, int]:
    """Return (sample_rate, channels, bits) of a PCM fmt chunk, or raise ValueError."""
    if size < 16 or body + size > len(data):
        raise ValueError("fmt chunk is truncated")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", data, body)
    if tag == _FORMAT_EXTENSIBLE and size >= 40:
        # WAVE_FORMAT_EXTENSIBLE carries the real format code in the first two bytes of its sub-format GUID.
        (tag,) = struct.unpack_from("<H", data, body + 24)
    if tag != _FORMAT_PCM:
        raise ValueError(f"not integer PCM (format tag 0x{tag:04x})")
    if channels < 1 or rate < 1:
        raise ValueError(f"invalid fmt chunk: {channels} channels at {rate} Hz")
    if bits not in _SUPPORTED_BITS:
        raise ValueError(f"unsupported PCM width: {bits} bits")
    if block_align != channels * bits // 8:
        raise ValueError(f"block align {block_align} does not match {channels} x {bits} bits")
    return rate, channels, bits


def _read_header(data: bytes) -> _Header:
    """Walk the chunks up to `data`; sizes are validated against the body by the caller."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if not all(0x20 <= b <= 0x7E for b in chunk_id):
            raise ValueError(f"garbage chunk id {chunk_id!r} at offset {pos}")
        if chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk comes before the fmt chunk")
            declared = None if size in _UNKNOWN_SIZES else size
            return _Header(fmt[0], fmt[1], fmt[2], body, declared)
        if chunk_id == b"fmt ":
            fmt = _read_fmt(data, body, size)
        # Any other chunk (LIST, fact, bext, JUNK ...) is skipped; chunks are padded to even sizes.
        pos = body + size + (size & 1)
        if pos > len(data):
            raise ValueError(f"chunk {chunk_id.decode('ascii')!r} runs past the end of the body")
    raise ValueError("no data chunk" if fmt is not None else "no fmt chunk")


def parse_wav(data: bytes) -> WavInfo:
    """Strictly parse a complete PCM WAV; a body shorter than its data chunk says is a truncated answer.

    A data size of 0 or 0xFFFFFFFF (streaming headers) means "runs to the end of the body".
    """
    header = _read_header(data)
    block_align = header.channels * header.bits_per_sample // 8
    available = len(data) - header.data_offset
    if header.declared_data_size is None:
        size = available
    elif header.declared_data_size > available:
        raise ValueError(
            f"truncated WAV: data chunk declares {header.declared_data_size} bytes but {available} follow"
        )
    else:
        size = header.declared_data_size
    frames = size // block_align  # a partial trailing frame (cut stream) is dropped, never half-read
    return WavInfo(
        sample_rate=header.sample_rate,
        channels=header.channels,
        bits_per_sample=header.bits_per_sample,
        frames=frames,
        data_offset=header.data_offset,
        data_size=frames * block_align,
    )


def is_silence_placeholder(data: bytes) -> bool:
    """True for the engine's inference-error answer: ~1 s of 16 kHz mono zeros sent with a 200."""
    try:
        info = parse_wav(data)
    except ValueError:
        return False
    if info.sample_rate != PLACEHOLDER_RATE or info.channels != 1 or info.bits_per_sample == 8:
        return False  # 8-bit PCM is unsigned: its zero is 0x80, and the engine never sends it anyway
    if abs(info.frames - PLACEHOLDER_FRAMES) > PLACEHOLDER_FRAME_SLACK:
        return False
    body = np.frombuffer(data, dtype=np.uint8, count=info.data_size, offset=info.data_offset)
    return not body.any()


def _header_bytes(sample_rate: int, channels: int, bits: int, riff_size: int, data_size: int) -> bytes:
    block_align = channels * bits // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", riff_size, b"WAVE",
        b"fmt ", 16, _FORMAT_PCM, channels, sample_rate, sample_rate * block_align, block_align, bits,
        b"data", data_size,
    )  # fmt: skip


def streaming_wav_header(sample_rate: int, channels: int = 1, bits_per_sample: int = 16) -> bytes:
    """44-byte header for a stream of unknown length, with both sizes at the maximum as ffmpeg writes for pipes.

    Strict players reject the engine's zero-size header (engine-protocol §3.6) but accept this one.
    """
    if bits_per_sample not in _SUPPORTED_BITS or channels < 1 or sample_rate < 1:
        raise ValueError(f"cannot frame {channels} x {bits_per_sample}-bit PCM at {sample_rate} Hz")
    return _header_bytes(sample_rate, channels, bits_per_sample, 0xFFFFFFFF, 0xFFFFFFFF)


def parse_streaming_header(data: bytes) -> tuple[int, int, int]:
    """The engine's streaming header (first 44+ bytes of the stream) → (sample_rate, channels, bits)."""
    if len(data) < STREAMING_HEADER_SIZE:
        raise ValueError(f"streaming header needs {STREAMING_HEADER_SIZE} bytes, got {len(data)}")
    header = _read_header(data)
    return header.sample_rate, header.channels, header.bits_per_sample


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] (clipped beyond) → little-endian int16; int16 input passes through."""
    if samples.dtype == np.int16:
        return samples.astype("<i2", copy=False)
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"expected float or int16 samples, got {samples.dtype}")
    scaled = np.clip(samples, -1.0, 1.0) * 32767.0
    pcm: np.ndarray = np.rint(scaled).astype("<i2")
    return pcm


def pcm16_wav(samples: np.ndarray | bytes, sample_rate: int) -> bytes:
    """Mono PCM16 RIFF WAV from float/int16 samples or from raw int16 LE bytes."""
    if isinstance(samples, bytes | bytearray | memoryview):
        pcm = bytes(samples)
        if len(pcm) % 2:
            raise ValueError("raw PCM16 must have an even number of bytes")
    else:
        if samples.ndim == 2 and samples.shape[1] == 1:
            samples = samples[:, 0]
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples, got shape {samples.shape}")
        pcm = to_pcm16(samples).tobytes()
    return _header_bytes(sample_rate, 1, 16, 36 + len(pcm), len(pcm)) + pcm


def wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """PCM WAV bytes (8/16/24/32-bit) → float32 mono in [-1, 1) and the sample rate; channels are averaged."""
    info = parse_wav(data)
    width = info.bits_per_sample // 8
    count = info.frames * info.channels
    raw = np.frombuffer(data, dtype=np.uint8, count=info.data_size, offset=info.data_offset)
    if width == 1:
        samples = (raw.astype(np.float32) - 128.0) * np.float32(1 / 128)
    elif width == 2:
        samples = raw.view("<i2").astype(np.float32) * np.float32(1 / 32768)
    elif width == 3:
        # Place the 3 bytes in the top of an int32 so the sign comes for free, then scale by 2**31.
        widened = np.zeros((count, 4), dtype=np.uint8)
        widened[:, 1:] = raw.reshape(count, 3)
        samples = widened.view("<i4").reshape(count).astype(np.float32) * np.float32(1 / 2**31)
    else:
        samples = raw.view("<i4").astype(np.float32) * np.float32(1 / 2**31)
    if info.channels > 1:
        samples = samples.reshape(info.frames, info.channels).mean(axis=1, dtype=np.float32)
    return samples, info.sample_rate
