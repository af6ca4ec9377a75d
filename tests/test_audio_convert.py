"""Output conversion: every format, whole and streamed, short and long clips (libsndfile's Ogg crash was
≥ 60 s, DESIGN §9: a long clip stays in every format), rates, errors."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from gateway.audio.convert import OUTPUT_FORMATS, encode, resample
from gateway.audio.encoders import stream_encoder
from gateway.audio.wav import parse_wav, to_pcm16
from gateway.errors import BadRequest
from tests.support import decode_wav, pcm16, rms, speech_like_signal

CONTAINERS = {"aac": "aac", "mp3": "mp3", "flac": "flac"}  # as PyAV's demuxers name them


def decode(data: bytes, fmt: str, rate: int) -> tuple[np.ndarray, int]:
    """Decode encoder output independently: the raw bytes for pcm, soundfile for wav and Ogg Opus (it reports
    the rate OpusHead names; Opus decoders otherwise always give 48 kHz), PyAV (checking the container) for
    the rest (libsndfile cannot read a FLAC stream of unknown length)."""
    if fmt == "pcm":
        return pcm16(data), rate
    if fmt == "opus":
        assert data[:4] == b"OggS" and data[28:36] == b"OpusHead"
    if fmt in ("wav", "opus"):
        return decode_wav(data)
    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.format.name == CONTAINERS[fmt]
        frames = list(container.decode(audio=0))
    samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])
    if samples.dtype.kind == "i":  # FLAC decodes to integer PCM
        return samples.astype(np.float32) / np.float32(2 ** (8 * samples.dtype.itemsize - 1)), frames[0].sample_rate
    return samples.astype(np.float32), frames[0].sample_rate


def duration_tolerance(fmt: str, rate: int) -> float:
    """Codec padding: ADTS AAC keeps its 1024-sample priming and pads the last frame, MP3 without a LAME
    header keeps LAME's 1105-sample delay and pads its last 1152-sample frame (nothing in either says to
    drop them); Ogg Opus trims its pre-skip and end exactly; PCM formats and FLAC are exact."""
    if fmt == "aac":
        return 2 * 1024 / rate
    if fmt == "mp3":
        return 2 * 1152 / rate
    return 1e-9


SHORT, LONG = 2.0, 72.0

SIGNALS = {(seconds, rate): speech_like_signal(seconds, rate) for seconds in (SHORT, LONG) for rate in (32000, 48000)}


def rms_db(samples: np.ndarray) -> float:
    return 20 * float(np.log10(rms(samples)))


def test_the_offered_formats_and_content_types() -> None:
    assert OUTPUT_FORMATS == {
        "wav": "audio/wav",
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "flac": "audio/flac",
        "aac": "audio/aac",
        "pcm": "audio/pcm",
    }


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
@pytest.mark.parametrize(("seconds", "rate"), [(SHORT, 32000), (LONG, 32000), (LONG, 48000)])
def test_every_format_round_trips_rate_duration_and_level(fmt: str, seconds: float, rate: int) -> None:
    source = SIGNALS[(seconds, rate)]
    data, out_rate = encode(source, rate, fmt)
    expected_rate = 48000 if fmt == "opus" else rate  # Opus has no 32 kHz mode; the next one up is 48 kHz
    assert out_rate == expected_rate
    decoded, decoded_rate = decode(data, fmt, out_rate)
    assert decoded_rate == expected_rate
    assert len(decoded) / decoded_rate == pytest.approx(seconds, abs=duration_tolerance(fmt, out_rate))
    if fmt in ("wav", "flac", "pcm"):  # lossless: equal to within one PCM16 step
        np.testing.assert_allclose(decoded, source, atol=1.01 / 32767)
    else:  # lossy: the level survives, so the payload is the signal and not silence or noise
        assert rms_db(decoded) == pytest.approx(rms_db(source), abs=1.0)


def test_wav_output_is_pcm16_mono() -> None:
    data, _ = encode(SIGNALS[(SHORT, 32000)], 32000, "wav")
    info = parse_wav(data)
    assert (info.sample_rate, info.channels, info.bits_per_sample, info.frames) == (32000, 1, 16, 64000)


@pytest.mark.parametrize(
    ("fmt", "target", "expected"),
    [
        ("wav", 16000, 16000),
        ("flac", 44100, 44100),
        ("pcm", 24000, 24000),
        ("mp3", 24000, 24000),
        ("mp3", 96000, 48000),  # above what MPEG audio can carry: the highest it can
        ("aac", 20000, 22050),
        ("opus", 22050, 24000),  # the nearest Opus rate at or above the request
        ("opus", 8000, 8000),
    ],
)
def test_target_rate_resolves_to_a_rate_the_codec_supports(fmt: str, target: int, expected: int) -> None:
    data, out_rate = encode(SIGNALS[(SHORT, 32000)], 32000, fmt, target_rate=target)
    assert out_rate == expected
    decoded, decoded_rate = decode(data, fmt, out_rate)
    assert decoded_rate == expected
    assert len(decoded) / decoded_rate == pytest.approx(SHORT, abs=duration_tolerance(fmt, out_rate))


def test_values_past_full_scale_are_clipped_not_wrapped() -> None:
    loud = 1.8 * SIGNALS[(SHORT, 32000)]
    data, _ = encode(loud, 32000, "flac")
    decoded, _ = decode(data, "flac", 32000)
    assert float(np.max(np.abs(decoded))) <= 1.0
    big = np.abs(loud) > 0.1
    assert np.all(np.sign(decoded[big]) == np.sign(loud[big]))  # wrapping would flip signs at the peaks


def test_unknown_format_lists_the_supported_ones() -> None:
    with pytest.raises(BadRequest) as caught:
        encode(SIGNALS[(SHORT, 32000)], 32000, "wma")
    err = caught.value
    assert (err.status, err.code) == (400, "unsupported_format")
    assert all(fmt in err.message for fmt in OUTPUT_FORMATS)


@pytest.mark.parametrize("target", [0, 100, 1_000_000])
def test_absurd_target_rates_are_bad_requests(target: int) -> None:
    with pytest.raises(BadRequest) as caught:
        encode(SIGNALS[(SHORT, 32000)], 32000, "wav", target_rate=target)
    assert caught.value.code == "invalid_sample_rate"


def test_stereo_input_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        encode(np.zeros((100, 2), dtype=np.float32), 32000, "wav")


def test_resample() -> None:
    source = SIGNALS[(SHORT, 32000)]
    assert resample(source, 32000, 32000) is source
    up = resample(source, 32000, 48000)
    down = resample(source, 32000, 24000)
    assert (len(up), len(down)) == (96000, 48000)
    assert up.dtype == down.dtype == np.float32
    assert rms_db(up) == pytest.approx(rms_db(source), abs=0.1)
    assert rms_db(down) == pytest.approx(rms_db(source), abs=0.1)


def streamed(source: np.ndarray, rate: int, fmt: str, out_rate: int, chunk_bytes: int = 48_001) -> list[bytes]:
    """Feed int16 PCM in uneven chunks (odd sizes split samples) as an engine stream does; the pieces out."""
    pcm = to_pcm16(source).tobytes()
    encoder = stream_encoder(fmt, rate, out_rate)
    pieces = [encoder.feed(pcm[start : start + chunk_bytes]) for start in range(0, len(pcm), chunk_bytes)]
    return [*pieces, encoder.finish()]


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
@pytest.mark.parametrize(("seconds", "rate", "target"), [(SHORT, 32000, None), (LONG, 32000, None),
                                                         (SHORT, 32000, 24000)])
def test_a_streamed_file_decodes_like_the_whole_clip(fmt: str, seconds: float, rate: int, target: int | None) -> None:
    """Encoded chunk by chunk, every format decodes to the whole clip's length (± one codec frame, for the
    resampler's streaming edge) and level, and bytes come out before the end, not only at `finish`."""
    source = SIGNALS[(seconds, rate)]
    whole, out_rate = encode(source, rate, fmt, target_rate=target)
    pieces = streamed(source, rate, fmt, out_rate)
    early = sum(len(p) for p in pieces[: len(pieces) // 2])
    assert early > 0.3 * sum(len(p) for p in pieces), [len(p) for p in pieces]
    whole_samples, _ = decode(whole, fmt, out_rate)
    stream_samples, stream_rate = decode(b"".join(pieces), fmt, out_rate)
    assert stream_rate == out_rate
    frame = {"mp3": 1152, "aac": 1024, "opus": 960}.get(fmt, 1)
    assert abs(len(stream_samples) - len(whole_samples)) <= frame, (len(stream_samples), len(whole_samples))
    assert rms_db(stream_samples) == pytest.approx(rms_db(source), abs=1.0)


def test_streamed_wav_is_a_streaming_header_then_pcm() -> None:
    pieces = streamed(SIGNALS[(SHORT, 32000)], 32000, "wav", 32000)
    assert pieces[0][:4] == b"RIFF" and parse_wav(pieces[0]).sample_rate == 32000
    body = b"".join(pieces)
    assert body[44:] == encode(SIGNALS[(SHORT, 32000)], 32000, "pcm")[0]


def test_the_mp3_settings_are_for_speech() -> None:
    """48 kbps CBR mono: 5 s is 30 kB (the old LAME VBR default made 44 kB), and no ID3 tag comes first."""
    data, rate = encode(speech_like_signal(5.0, 32000), 32000, "mp3")
    assert rate == 32000 and data[:2] == b"\xff\xfb"  # an MPEG-1 Layer III frame header, no "ID3"
    assert 5.0 * 48_000 / 8 <= len(data) <= 5.2 * 48_000 / 8, len(data)
