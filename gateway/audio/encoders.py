"""Incremental encoders: engine PCM (int16 LE mono) in, bytes of the client's format out as soon as the codec
has them. The whole-clip answer uses the same encoders, so a streamed file and a whole one agree.

Ogg Opus, ADTS AAC and FLAC are encoded with PyAV (ffmpeg's libopus, aac and flac) into an in-memory sink that
is drained after every engine chunk; mp3 with lameenc (LAME itself, taking the engine's int16 PCM as is: a
quarter of the CPU of the LAME inside PyAV's wheels at the same settings, bench/convert_cost.py); wav and pcm
are framed by hand. Resampling (to a
requested rate, or to a rate the codec can carry) uses soxr's streaming state, so chunk edges do not click.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO, Protocol

import av
import lameenc
import numpy as np
import soxr

from gateway.audio.wav import streaming_wav_header, to_pcm16

# Rates each codec can carry; `output_rate` picks the nearest allowed rate at or above the requested one.
MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


@dataclass(frozen=True)
class Codec:
    """One compressed output format: container, ffmpeg encoder and the settings chosen for speech."""

    container: str
    encoder: str
    rates: tuple[int, ...] | None = None
    bit_rate: int | None = None
    options: dict[str, str] = field(default_factory=dict)  # encoder options
    container_options: dict[str, str] = field(default_factory=dict)


CODECS: dict[str, Codec] = {
    # Mono speech: 48 kbps CBR (LAME keeps ~15 kHz of bandwidth at 32 kHz) and LAME quality 7, half the CPU
    # of its default quality 5 (bench/convert_cost.py). Encoded by LameEncoder, not PyAV; no ID3 tag and no
    # Xing/LAME header: a stream cannot seek back to fill them in, and a whole clip must match a stream.
    "mp3": Codec("mp3", "lameenc", MPEG_RATES, 48_000, {"quality": "7"}),
    # 32 kbps Opus is transparent-ish for speech; complexity 5 of 10 costs ~2/3 of the default for a barely
    # measurable loss. Ogg pages close every 100 ms (default 1 s) so audio leaves soon after it is encoded.
    "opus": Codec("ogg", "libopus", OPUS_RATES, 32_000, {"compression_level": "5"}, {"page_duration": "100000"}),
    # ADTS (no container to seek in); ffmpeg's own AAC-LC encoder at 64 kbps mono. Its "fast" coder costs
    # 40 % of the default "twoloop" one at the same size.
    "aac": Codec("adts", "aac", MPEG_RATES, 64_000, {"aac_coder": "fast"}),
    # Lossless; a stream's STREAMINFO says "length unknown" (the muxer cannot seek back), a whole clip's does not.
    "flac": Codec("flac", "flac"),
}


def output_rate(fmt: str, requested: int) -> int:
    """The rate `fmt` is written at: `requested`, raised to the nearest rate the codec can carry."""
    codec = CODECS.get(fmt)
    if codec is None or codec.rates is None:
        return requested
    return next((rate for rate in codec.rates if rate >= requested), codec.rates[-1])


class StreamEncoder(Protocol):
    """`feed` takes int16 LE mono PCM at the source rate (any chunking) and returns what can be sent now;
    `finish` flushes the codec and returns the rest. `costly`: run `feed` off the event loop."""

    rate: int
    costly: bool

    def feed(self, pcm: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _WholeSamples:
    """Cuts int16 LE bytes on sample boundaries: a network read can split a sample; its half waits for the next."""

    def __init__(self) -> None:
        self._carry = b""

    def __call__(self, pcm: bytes) -> bytes:
        if self._carry or len(pcm) % 2:
            pcm = self._carry + pcm
            usable = len(pcm) - len(pcm) % 2
            pcm, self._carry = pcm[:usable], pcm[usable:]
        return pcm


class _Samples:
    """int16 LE bytes → float32 samples at the output rate (soxr streaming state; a chunk may split a sample)."""

    def __init__(self, source_rate: int, rate: int) -> None:
        self._whole = _WholeSamples()
        self._resampler = soxr.ResampleStream(source_rate, rate, 1, dtype="float32") if rate != source_rate else None

    def feed(self, pcm: bytes, *, last: bool = False) -> np.ndarray:
        pcm = self._whole(pcm)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)
        if self._resampler is None:
            return samples
        resampled: np.ndarray = self._resampler.resample_chunk(samples, last=last)
        return resampled


class PcmEncoder:
    """Raw int16 PCM, optionally behind a streaming WAV header. Without resampling a chunk passes as is."""

    costly = False

    def __init__(self, source_rate: int, rate: int, *, wav: bool) -> None:
        self.rate = rate
        self._header = streaming_wav_header(rate) if wav else b""
        self._samples = _Samples(source_rate, rate) if rate != source_rate else None
        self._whole = _WholeSamples()  # engine streams are cut on sample boundaries; be safe anyway

    def feed(self, pcm: bytes) -> bytes:
        header, self._header = self._header, b""
        if self._samples is not None:
            return header + _pcm16_bytes(self._samples.feed(pcm))
        pcm = self._whole(pcm)
        return header + pcm if header else pcm

    def finish(self) -> bytes:
        header, self._header = self._header, b""
        tail = _pcm16_bytes(self._samples.feed(b"", last=True)) if self._samples is not None else b""
        return header + tail


def _pcm16_bytes(samples: np.ndarray) -> bytes:
    return to_pcm16(samples).tobytes()


class _Sink:
    """A write-only file for PyAV: without `seek` the muxer writes a streamable file and never looks back."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class AvEncoder:
    """A compressed format through PyAV. `sink=None` streams (drained after every feed); a seekable sink is
    for a whole clip (the FLAC muxer then seeks back to write the length): a BytesIO is read after `finish`,
    a file holds the result itself (feed and finish return nothing then)."""

    costly = True

    def __init__(self, fmt: str, source_rate: int, rate: int, sink: BinaryIO | None = None) -> None:
        codec = CODECS[fmt]
        self.rate = rate
        self._samples = _Samples(source_rate, rate)
        self._sink = sink
        self._stream_sink = _Sink()
        self._container = av.open(sink if sink is not None else self._stream_sink, mode="w",
                                  format=codec.container, options=codec.container_options)
        stream = self._container.add_stream(codec.encoder, rate=rate, options=codec.options)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        if codec.bit_rate:
            stream.bit_rate = codec.bit_rate
        self._stream = stream
        self._pts = 0

    def feed(self, pcm: bytes) -> bytes:
        return self.feed_samples(self._samples.feed(pcm))

    def feed_samples(self, samples: np.ndarray) -> bytes:
        """Float32 mono samples already at the output rate (the whole-clip path)."""
        if len(samples):
            # PyAV re-frames any frame length into the encoder's frame size (1152 / 960 / 1024 / 4608 samples)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples).reshape(1, -1), format="flt",
                                               layout="mono")
            frame.sample_rate = self.rate
            frame.time_base = Fraction(1, self.rate)
            frame.pts = self._pts
            self._pts += len(samples)
            self._mux(self._stream.encode(frame))
        return self._stream_sink.drain()

    def finish(self) -> bytes:
        tail = self.feed_samples(self._samples.feed(b"", last=True))
        self._mux(self._stream.encode(None))
        self._container.close()  # writes the trailer (Ogg's last page, FLAC's length when it can seek)
        if self._sink is None:
            return tail + self._stream_sink.drain()
        return self._sink.getvalue() if isinstance(self._sink, io.BytesIO) else b""

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self._container.mux(packet)


class LameEncoder:
    """mp3 through lameenc with CODECS["mp3"]'s settings. LAME takes int16 PCM, so without resampling the
    engine's chunks go in untouched; the output rate is pinned (LAME would otherwise pick its own)."""

    costly = True

    def __init__(self, source_rate: int, rate: int) -> None:
        codec = CODECS["mp3"]
        self.rate = rate
        self._samples = _Samples(source_rate, rate) if rate != source_rate else None
        self._whole = _WholeSamples()
        self._lame = lameenc.Encoder()
        self._lame.set_channels(1)
        self._lame.set_in_sample_rate(rate)
        self._lame.set_out_sample_rate(rate)
        self._lame.set_bit_rate((codec.bit_rate or 48_000) // 1000)
        self._lame.set_quality(int(codec.options["quality"]))

    def feed(self, pcm: bytes) -> bytes:
        if self._samples is not None:
            return self.feed_samples(self._samples.feed(pcm))
        pcm = self._whole(pcm)
        return bytes(self._lame.encode(pcm)) if pcm else b""

    def feed_samples(self, samples: np.ndarray) -> bytes:
        """Float32 mono samples already at the output rate (the whole-clip path)."""
        return bytes(self._lame.encode(_pcm16_bytes(samples))) if len(samples) else b""

    def finish(self) -> bytes:
        tail = self.feed_samples(self._samples.feed(b"", last=True)) if self._samples is not None else b""
        return tail + bytes(self._lame.flush())


def stream_encoder(fmt: str, source_rate: int, rate: int) -> StreamEncoder:
    """The incremental encoder for `fmt` (one of wav, pcm and CODECS) from `source_rate` to `rate`."""
    if fmt in ("wav", "pcm"):
        return PcmEncoder(source_rate, rate, wav=fmt == "wav")
    if fmt == "mp3":
        return LameEncoder(source_rate, rate)
    return AvEncoder(fmt, source_rate, rate)


def encode_clip(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """A whole clip (float32 mono at a rate `fmt` can carry) with the same encoder settings as a stream."""
    if fmt == "mp3":
        mp3 = LameEncoder(rate, rate)
        return mp3.feed_samples(samples) + mp3.finish()
    encoder = AvEncoder(fmt, rate, rate, sink=io.BytesIO())
    encoder.feed_samples(samples)
    return encoder.finish()
