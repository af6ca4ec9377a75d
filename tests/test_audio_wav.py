"""Hand-rolled WAV framing: strict parsing, truncation, streaming headers, the engine's silence placeholder."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from gateway.audio.wav import (
    is_silence_placeholder,
    parse_streaming_header,
    parse_wav,
    pcm16_wav,
    streaming_wav_header,
    wav_samples,
)
from tests.support import speech_like_signal


def fmt_chunk(rate: int, channels: int = 1, bits: int = 16, tag: int = 1) -> bytes:
    align = channels * bits // 8
    return b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, rate, rate * align, align, bits)


def engine_streaming_header(rate: int) -> bytes:
    """What api_v2 sends first in a streamed WAV: RIFF size 36 and data size 0 (engine-protocol §3.6)."""
    return b"RIFF" + struct.pack("<I", 36) + b"WAVE" + fmt_chunk(rate) + b"data" + struct.pack("<I", 0)


def test_parse_a_complete_wav() -> None:
    data = pcm16_wav(speech_like_signal(1.5, 32000), 32000)
    info = parse_wav(data)
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (32000, 1, 16)
    assert (info.frames, info.data_offset, info.data_size) == (48000, 44, 96000)
    assert info.duration == pytest.approx(1.5)
    assert len(data) == 44 + 96000


def test_parse_a_libsndfile_wav_with_several_channels() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((1000, 2), dtype=np.float32), 44100, format="WAV", subtype="PCM_24")
    info = parse_wav(buffer.getvalue())
    assert (info.sample_rate, info.channels, info.bits_per_sample, info.frames) == (44100, 2, 24, 1000)


def test_truncated_body_is_refused() -> None:
    data = pcm16_wav(speech_like_signal(1.0, 32000), 32000)
    with pytest.raises(ValueError, match="truncated"):
        parse_wav(data[:-1000])


def test_a_truncated_chunk_before_data_is_refused() -> None:
    data = b"RIFF" + struct.pack("<I", 100) + b"WAVE" + fmt_chunk(16000) + b"LIST" + struct.pack("<I", 500) + b"x"
    with pytest.raises(ValueError, match="past the end"):
        parse_wav(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"RIFF", b"OggS" + bytes(100), b"RIFF\x24\x00\x00\x00AVI " + bytes(40), np.random.default_rng(3).bytes(500)],
)
def test_non_wav_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="RIFF/WAVE"):
        parse_wav(data)


def test_garbage_inside_a_riff_is_refused() -> None:
    data = b"RIFF" + struct.pack("<I", 1000) + b"WAVE" + fmt_chunk(16000) + b"\x00\xff\x10\x80" + bytes(1000)
    with pytest.raises(ValueError, match="garbage chunk"):
        parse_wav(data)


def test_missing_chunks_are_refused() -> None:
    with pytest.raises(ValueError, match="no data chunk"):
        parse_wav(b"RIFF" + struct.pack("<I", 28) + b"WAVE" + fmt_chunk(16000))
    with pytest.raises(ValueError, match="before the fmt"):
        parse_wav(b"RIFF" + struct.pack("<I", 20) + b"WAVE" + b"data" + struct.pack("<I", 4) + bytes(4))


def test_non_pcm_wav_is_refused() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like_signal(0.5, 16000), 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(ValueError, match="not integer PCM"):
        parse_wav(buffer.getvalue())


def test_list_chunk_and_odd_chunk_padding_are_skipped() -> None:
    pcm = bytes(range(200)) * 10
    odd_chunk = b"note" + struct.pack("<I", 3) + b"abc" + b"\x00"  # 3-byte body + pad byte
    list_chunk = b"LIST" + struct.pack("<I", 16) + b"INFOISFT" + struct.pack("<I", 4) + b"gw\x00\x00"
    body = b"WAVE" + fmt_chunk(24000) + list_chunk + odd_chunk + b"data" + struct.pack("<I", len(pcm)) + pcm
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    info = parse_wav(data)
    assert (info.sample_rate, info.frames, info.data_size) == (24000, 1000, 2000)
    assert data[info.data_offset : info.data_offset + info.data_size] == pcm


def test_wave_format_extensible_pcm_is_accepted() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like_signal(0.5, 48000), 48000, format="WAVEX", subtype="PCM_16")
    assert parse_wav(buffer.getvalue()).frames == 24000


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
def test_unknown_data_sizes_run_to_the_end_of_the_body(size: int) -> None:
    pcm = bytes(3201)  # 1600 whole frames and half of one more, as a cut stream would end
    header = b"RIFF" + struct.pack("<I", size) + b"WAVE" + fmt_chunk(16000) + b"data" + struct.pack("<I", size)
    info = parse_wav(header + pcm)
    assert (info.frames, info.data_size) == (1600, 3200)


def test_engine_streaming_body_parses_with_the_frames_received() -> None:
    pcm = pcm16_wav(speech_like_signal(0.25, 32000), 32000)[44:]
    info = parse_wav(engine_streaming_header(32000) + pcm)
    assert info.frames == 8000


def test_silence_placeholder_is_detected() -> None:
    assert is_silence_placeholder(pcm16_wav(np.zeros(16000, dtype=np.float32), 16000))
    assert is_silence_placeholder(pcm16_wav(np.zeros(16010, dtype=np.float32), 16000))


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        (speech_like_signal(1.0, 16000), 16000),  # real audio at the placeholder's rate and length
        (np.zeros(32000, dtype=np.float32), 32000),  # silence at the engine's normal rate
        (np.zeros(48000, dtype=np.float32), 16000),  # 3 s of 16 kHz silence is not the 1 s placeholder
    ],
)
def test_other_audio_is_not_the_placeholder(samples: np.ndarray, rate: int) -> None:
    assert not is_silence_placeholder(pcm16_wav(samples, rate))


def test_one_nonzero_sample_or_a_broken_body_is_not_the_placeholder() -> None:
    almost = np.zeros(16000, dtype=np.float32)
    almost[12345] = 1 / 32767
    assert not is_silence_placeholder(pcm16_wav(almost, 16000))
    assert not is_silence_placeholder(pcm16_wav(np.zeros(16000, dtype=np.float32), 16000)[:-100])
    assert not is_silence_placeholder(b"not a wav")


def test_streaming_header_round_trip() -> None:
    header = streaming_wav_header(24000)
    assert len(header) == 44
    assert struct.unpack_from("<I", header, 4)[0] == 0xFFFFFFFF
    assert struct.unpack_from("<I", header, 40)[0] == 0xFFFFFFFF
    assert parse_streaming_header(header) == (24000, 1, 16)
    assert parse_streaming_header(streaming_wav_header(48000, 2, 24)) == (48000, 2, 24)


def test_players_read_our_streaming_header_followed_by_pcm() -> None:
    voice = speech_like_signal(0.5, 32000)
    stream = streaming_wav_header(32000) + pcm16_wav(voice, 32000)[44:]
    decoded, rate = sf.read(io.BytesIO(stream), dtype="float32")
    assert rate == 32000 and len(decoded) == len(voice)
    np.testing.assert_allclose(decoded, voice, atol=1 / 32767)


def test_parse_the_engine_streaming_header() -> None:
    assert parse_streaming_header(engine_streaming_header(32000)) == (32000, 1, 16)
    assert parse_streaming_header(engine_streaming_header(32000) + bytes(4096)) == (32000, 1, 16)
    with pytest.raises(ValueError, match="44 bytes"):
        parse_streaming_header(engine_streaming_header(32000)[:30])
    with pytest.raises(ValueError, match="RIFF/WAVE"):
        parse_streaming_header(b"OggS" + bytes(60))


def test_pcm16_wav_from_bytes_equals_from_array_and_clips() -> None:
    loud = np.array([0.0, 0.5, -0.5, 1.7, -3.0], dtype=np.float32)
    data = pcm16_wav(loud, 8000)
    assert np.frombuffer(data[44:], dtype="<i2").tolist() == [0, 16384, -16384, 32767, -32767]
    assert pcm16_wav(data[44:], 8000) == data
    assert pcm16_wav(loud.reshape(-1, 1), 8000) == data
    with pytest.raises(ValueError):
        pcm16_wav(b"\x00\x01\x02", 8000)
    with pytest.raises(ValueError):
        pcm16_wav(np.zeros((10, 2), dtype=np.float32), 8000)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32"])
def test_wav_samples_reads_every_pcm_width_like_libsndfile(subtype: str) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like_signal(0.5, 22050), 22050, format="WAV", subtype=subtype)
    ours, rate = wav_samples(buffer.getvalue())
    theirs, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32")
    assert rate == 22050 and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_wav_samples_averages_channels() -> None:
    buffer = io.BytesIO()
    left = speech_like_signal(0.5, 16000)
    sf.write(buffer, np.stack([left, np.zeros_like(left)], axis=1), 16000, format="WAV", subtype="PCM_16")
    mono, _ = wav_samples(buffer.getvalue())
    np.testing.assert_allclose(mono, left / 2, atol=1 / 32768)
