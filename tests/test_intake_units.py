"""Reference intake, unit by unit: exact limits, messages, trimming bounds, fades and the on-disk writes.

Fast and precise (they back `make mutate`): every clip is a few seconds of synthetic audio whose frame
levels are known exactly (an alternating ±level square wave has an RMS of exactly `level`), written with
soundfile into real WAV/FLAC/MP3 bytes. No mocks; how files are written is observed through Python's
audit hooks (tests/fs_events.py).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from gateway.audio.intake import (
    PreparedReference,
    decode_audio,
    prepare_reference,
    store_reference,
)
from gateway.audio.wav import parse_wav
from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from tests.fs_events import recording
from tests.support import flac_with_unknown_length

FORMATS_HINT = "accepted formats: WAV, FLAC, OGG (Vorbis or Opus) or MP3"

# ---------------------------------------------------------------------------- signals and encoders


def square(n: int, level: float) -> np.ndarray:
    """±level alternating every sample: every 10 ms frame has an RMS of exactly `level`."""
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    return (level * signs).astype(np.float32)


def wav(samples: np.ndarray, rate: int, subtype: str = "FLOAT", **options: Any) -> bytes:
    """Real WAV bytes; FLOAT keeps float32 samples bit-exact (and is decoded by libsndfile, not our parser)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=options.pop("format", "WAV"), subtype=subtype, **options)
    return buffer.getvalue()


def pcm_wav(count: int, rate: int, channels: int = 1) -> bytes:
    """Integer PCM WAV (decoded by our own parser) of `count` frames of silence."""
    return wav(np.zeros((count, channels), dtype=np.int16), rate, "PCM_16")


def flac(samples: np.ndarray, rate: int) -> bytes:
    return wav(samples, rate, "PCM_16", format="FLAC")



def id3_tagged(data: bytes) -> bytes:
    """An empty ID3v2.4 tag (10-byte header + 10 bytes of padding) in front of `data`."""
    return b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + data


def output_pcm(ref: PreparedReference) -> np.ndarray:
    """The int16 samples of a prepared reference."""
    samples, rate = sf.read(io.BytesIO(ref.wav), dtype="int16")
    assert rate == ref.sample_rate
    pcm: np.ndarray = np.asarray(samples, dtype=np.int16)
    return pcm


def as_pcm16(samples: np.ndarray) -> np.ndarray:
    """What the gateway's PCM16 writer makes of float samples (round half to even of x × 32767)."""
    pcm: np.ndarray = np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    return pcm


# ---------------------------------------------------------------------------- sniffing and messages


def test_undecodable_bytes_get_the_plain_message() -> None:
    for data in (b"\x00\x01 certainly not audio", b"RIFF" + bytes(40)):
        with pytest.raises(UnsupportedMedia) as caught:
            decode_audio(data)
        assert caught.value.code == "unsupported_audio"
        assert caught.value.message == f"could not decode the audio; {FORMATS_HINT}"


def test_a_format_without_a_sniffed_magic_never_reaches_libsndfile() -> None:
    """AIFF ("FORM") is refused by the magic-byte sniff, so the message names no format."""
    aiff = wav(square(800, 0.5), 8000, "PCM_16", format="AIFF")
    with pytest.raises(UnsupportedMedia) as caught:
        decode_audio(aiff)
    assert caught.value.message == f"could not decode the audio; {FORMATS_HINT}"


def test_a_format_libsndfile_finds_behind_an_id3_tag_is_refused_by_name() -> None:
    aiff = wav(square(800, 0.5), 8000, "PCM_16", format="AIFF")
    with pytest.raises(UnsupportedMedia) as caught:
        decode_audio(id3_tagged(aiff))
    assert caught.value.message == f"could not decode the audio (AIFF files are not accepted); {FORMATS_HINT}"


@pytest.mark.parametrize(
    ("options", "magic"),
    [
        ({"subtype": "PCM_16", "endian": "BIG"}, b"RIFX"),
        ({"subtype": "PCM_16", "format": "RF64"}, b"RF64"),
        ({"subtype": "PCM_16", "format": "W64"}, b"riff"),
        ({"subtype": "PCM_16", "format": "WAVEX"}, b"RIFF"),
        ({"subtype": "PCM_16", "format": "FLAC"}, b"fLaC"),
    ],
)
def test_every_sniffed_container_decodes(options: dict[str, Any], magic: bytes) -> None:
    data = wav(square(800, 0.5), 8000, **options)
    assert data[:4] == magic
    samples, rate = decode_audio(data)
    assert (len(samples), rate, samples.dtype.name) == (800, 8000, "float32")
    np.testing.assert_array_equal(samples, square(800, 0.5))


def test_an_id3_tagged_mp3_decodes_like_the_bare_one() -> None:
    mp3 = wav(square(8000, 0.25), 8000, "MPEG_LAYER_III", format="MP3")
    assert mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0  # a bare MPEG frame sync
    bare, bare_rate = decode_audio(mp3)
    tagged, tagged_rate = decode_audio(id3_tagged(mp3))
    assert bare_rate == tagged_rate == 8000
    assert len(bare) > 7000
    np.testing.assert_array_equal(tagged, bare)


def test_empty_upload_and_empty_stream_messages() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_audio(b"")
    assert (caught.value.code, caught.value.message) == ("empty_audio", "the audio file is empty")
    with pytest.raises(InvalidInput) as caught:
        decode_audio(wav(np.zeros(0, dtype=np.float32), 8000))  # a valid float WAV holding no frames
    assert (caught.value.code, caught.value.message) == ("empty_audio", "the audio contains no samples")


def test_a_single_sample_is_not_empty() -> None:
    samples, rate = decode_audio(wav(np.array([0.25], dtype=np.float32), 8000))  # libsndfile
    assert (samples.tolist(), rate) == ([0.25], 8000)
    samples, rate = decode_audio(wav(np.array([-0.5], dtype=np.float32), 8000, "PCM_16"))  # our parser
    assert (samples.tolist(), rate) == ([-0.5], 8000)


def test_nan_and_infinity_become_silence_and_full_scale() -> None:
    data = wav(np.array([np.nan, np.inf, -np.inf, 0.25, -0.5], dtype=np.float32), 8000)
    samples, _ = decode_audio(data)
    assert samples.dtype == np.float32
    assert samples.tolist() == [0.0, 1.0, -1.0, 0.25, -0.5]


# ---------------------------------------------------------------------------- channel, rate and length limits


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])  # our WAV parser / libsndfile
def test_eight_channels_are_averaged_and_nine_refused(subtype: str) -> None:
    eight = np.tile(np.arange(8, dtype=np.float32) / 16, (100, 1))  # channel c holds c/16
    samples, rate = decode_audio(wav(eight, 8000, subtype))
    assert (len(samples), rate, samples.dtype.name) == (100, 8000, "float32")
    assert set(samples.tolist()) == {0.21875}  # mean of 0/16 … 7/16
    nine = np.zeros((100, 9), dtype=np.float32)
    with pytest.raises(UnsupportedMedia) as caught:
        decode_audio(wav(nine, 8000, subtype))
    assert caught.value.message == f"could not decode the audio (9 channels at 8000 Hz); {FORMATS_HINT}"


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
@pytest.mark.parametrize(("rate", "accepted"), [(999, False), (1000, True), (192_000, True), (192_001, False)])
def test_source_rate_limits_are_inclusive(subtype: str, rate: int, accepted: bool) -> None:
    data = wav(np.zeros(10, dtype=np.float32), rate, subtype)
    if accepted:
        samples, got_rate = decode_audio(data)
        assert (len(samples), got_rate) == (10, rate)
    else:
        with pytest.raises(UnsupportedMedia) as caught:
            decode_audio(data)
        assert caught.value.message == f"could not decode the audio (1 channels at {rate} Hz); {FORMATS_HINT}"


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_a_declared_length_of_exactly_the_limit_is_accepted(subtype: str) -> None:
    samples, rate = decode_audio(wav(np.zeros(8000, dtype=np.float32), 8000, subtype), max_declared_seconds=1.0)
    assert (len(samples), rate) == (8000, 8000)
    with pytest.raises(PayloadTooLarge) as caught:
        decode_audio(wav(np.zeros(8001, dtype=np.float32), 8000, subtype), max_declared_seconds=1.0)
    assert (caught.value.status, caught.value.code) == (413, "audio_too_long")
    assert caught.value.message == "the audio is 1.0 s long; at most 1 s of audio is accepted"
    assert caught.value.extra == {"max_seconds": 1.0}


def test_the_default_decode_limit_is_120_seconds() -> None:
    assert len(decode_audio(pcm_wav(120_000, 1000))[0]) == 120_000
    over = pcm_wav(120_001, 1000)
    with pytest.raises(PayloadTooLarge) as caught:
        decode_audio(over)
    assert caught.value.message == "the audio is 120.0 s long; at most 120 s of audio is accepted"
    with pytest.raises(PayloadTooLarge):
        prepare_reference(over)  # prepare_reference has the same default


def test_prepare_reference_passes_its_decode_limit_on() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        prepare_reference(wav(square(16_000, 0.5), 8000), max_decode_seconds=1.5)
    assert caught.value.message == "the audio is 2.0 s long; at most 1.5 s of audio is accepted"


def test_unknown_length_flac_of_exactly_the_limit_is_accepted_one_frame_more_is_not() -> None:
    exact = flac_with_unknown_length(flac(square(16_000, 0.5), 8000))
    samples, rate = decode_audio(exact, max_declared_seconds=2.0)
    assert (len(samples), rate, samples.dtype.name) == (16_000, 8000, "float32")
    np.testing.assert_array_equal(samples, square(16_000, 0.5))
    with pytest.raises(PayloadTooLarge) as caught:
        decode_audio(flac_with_unknown_length(flac(square(16_001, 0.5), 8000)), max_declared_seconds=2.0)
    assert caught.value.message == "the audio runs past 2 s; at most 2 s of audio is accepted"


def test_unknown_length_flac_longer_than_one_decode_block_is_counted_across_blocks() -> None:
    """400 000 frames (1.5 decode blocks) with a 40 s limit at 8 kHz: refused after decoding 320 001."""
    long_flac = flac_with_unknown_length(flac(np.zeros(400_000, dtype=np.float32), 8000))
    with pytest.raises(PayloadTooLarge) as caught:
        decode_audio(long_flac, max_declared_seconds=40.0)
    assert caught.value.message == "the audio runs past 40 s; at most 40 s of audio is accepted"
    samples, _ = decode_audio(flac_with_unknown_length(flac(square(262_145, 0.5), 8000)), max_declared_seconds=40.0)
    assert len(samples) == 262_145  # one block and a single frame more


# ---------------------------------------------------------------------------- trimming


def test_trim_bounds_are_exact_at_frame_resolution() -> None:
    """16 kHz: 10 ms frames of 160 samples, 50 ms (800 samples) kept either side of the loud frames.

    A part 39 dB under the loudest frame counts as speech, one 41 dB under does not. The kept quiet part
    starts 40 samples into frame 50, which makes that frame's RMS 0.75 ** 0.5 of the part's level
    (-40.2 dB): trimming compares whole frames, so the clip starts 800 samples before frame 51.
    """
    rate, loud = 16_000, 0.5
    parts = [
        np.zeros(8_040, dtype=np.float32),  # silence: frames 0-49 and 40 samples of frame 50
        square(7_960, loud * 10 ** (-39 / 20)),  # rest of frame 50 .. frame 99: -39 dB
        square(64_000, loud),  # frames 100-499
        square(8_000, loud * 10 ** (-41 / 20)),  # frames 500-549: -41 dB, trimmed
        np.zeros(8_000, dtype=np.float32),
    ]
    clip = np.concatenate(parts)
    ref = prepare_reference(wav(clip, rate))
    start, end = 51 * 160 - 800, 500 * 160 + 800
    assert (start, end) == (7_360, 80_800)
    out = output_pcm(ref)
    assert ref.sample_rate == rate
    assert len(out) == 73_440
    assert ref.duration == 73_440 / rate
    assert ref.trimmed_seconds == (len(clip) - 73_440) / rate
    np.testing.assert_array_equal(out, as_pcm16(clip[start:end]))
    assert ref.warnings == ()


def test_a_frame_exactly_40_db_under_the_loudest_still_counts_as_speech() -> None:
    """±0.005 against ±0.5: the frame RMS equals the threshold bit for bit (float32 0.5 × 0.01)."""
    clip = np.concatenate([np.zeros(8_000, dtype=np.float32), square(160, 0.005), square(64_000, 0.5)])
    ref = prepare_reference(wav(clip, 16_000))
    assert len(output_pcm(ref)) == 160 + 64_000 + 800  # the quiet frame and 50 ms before it are kept
    assert ref.trimmed_seconds == (8_000 - 800) / 16_000


# ---------------------------------------------------------------------------- level checks and warnings


def test_silent_reference_message_reports_its_peak() -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_reference(wav(square(64_000, 0.0005), 16_000))
    assert caught.value.code == "reference_silent"
    assert caught.value.message == "the reference audio is silent (peak -66.0 dBFS)"


def test_clipping_warning_at_exactly_one_in_a_thousand_samples_at_the_clip_level() -> None:
    clip = square(56_000, 0.5)
    clip[1000:56_000:1000] = np.float32(0.99)  # 55 samples at exactly the clip level …
    clip[0] = np.float32(-0.99)  # … and one more: 56 of 56 000 = 0.1 %
    ref = prepare_reference(wav(clip, 16_000))
    assert ref.warnings == (
        "the reference looks clipped (0.1% of samples at full scale); distortion will be cloned too",
    )
    clip[0] = np.float32(0.5)  # 55 of 56 000: under the share
    assert prepare_reference(wav(clip, 16_000)).warnings == ()
    clip[0] = np.float32(0.9899)  # just under the level does not count
    assert prepare_reference(wav(clip, 16_000)).warnings == ()


def test_low_level_warning_text() -> None:
    ref = prepare_reference(wav(square(64_000, 0.02), 16_000))
    assert ref.warnings == (
        "the reference level is very low (peak -34.0 dBFS, RMS -34.0 dBFS); the cloned voice may be noisy",
    )


def test_low_rate_warning_text_and_its_boundary() -> None:
    assert prepare_reference(wav(square(64_000, 0.5), 16_000)).warnings == ()
    ref = prepare_reference(wav(square(63_996, 0.5), 15_999))
    assert ref.warnings == (
        "the reference is sampled at 15999 Hz; below 16000 Hz the engine gets little high-frequency detail "
        "and the clone may sound muffled",
    )


# ---------------------------------------------------------------------------- duration window


def test_too_short_message_keeps_two_decimals_when_one_would_round_into_range() -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_reference(wav(square(47_400, 0.5), 16_000))  # 2.9625 s would show as "3.0"
    err = caught.value
    assert (err.status, err.code) == (422, "reference_too_short")
    assert err.message == "reference audio is 2.96 s after trimming silence; the engine accepts 3.0–10.0 s"
    assert err.extra == {"duration": 2.962, "min_seconds": 3.0, "max_seconds": 10.0}


def test_too_long_message_uses_one_decimal_when_that_is_out_of_range() -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_reference(wav(square(161_600, 0.5), 16_000))  # 10.1 s
    err = caught.value
    assert err.code == "reference_too_long"
    assert err.message == "reference audio is 10.1 s after trimming silence; the engine accepts 3.0–10.0 s"
    assert err.extra == {"duration": 10.1, "min_seconds": 3.0, "max_seconds": 10.0}


def test_a_clip_at_the_minimum_is_padded_20_ms_with_silence() -> None:
    clip = square(48_000, 0.5)  # exactly 3.0 s
    ref = prepare_reference(wav(clip, 16_000))
    out = output_pcm(ref)
    assert len(out) == 48_320 and ref.duration == 3.02
    np.testing.assert_array_equal(out[:48_000], as_pcm16(clip))
    assert not out[48_000:].any()


def test_a_clip_at_the_engine_margin_is_left_alone() -> None:
    clip = square(159_680, 0.5)  # 9.98 s: exactly max - 20 ms
    ref = prepare_reference(wav(clip, 16_000))
    assert ref.warnings == () and ref.duration == 9.98
    np.testing.assert_array_equal(output_pcm(ref), as_pcm16(clip))  # no fade at the end


def test_a_clip_of_exactly_the_maximum_is_cut_to_the_margin_without_a_warning() -> None:
    clip = square(160_000, 0.5)  # 10.0 s: accepted, then cut 20 ms inside the engine's window
    ref = prepare_reference(wav(clip, 16_000))
    assert ref.warnings == ()
    assert len(output_pcm(ref)) == 159_680 and ref.duration == 9.98


def test_trim_to_max_cuts_with_a_10_ms_linear_fade_and_says_so() -> None:
    clip = square(192_000, 0.5)  # 12 s
    ref = prepare_reference(wav(clip, 16_000), trim_to_max=True)
    assert ref.warnings == ("the reference was cut from 12.0 s to the first 9.98 s",)
    out = output_pcm(ref)
    assert len(out) == 159_680
    np.testing.assert_array_equal(out[:-160], as_pcm16(clip[: 159_680 - 160]))
    fade = np.linspace(1.0, 0.0, 160, dtype=np.float32)
    np.testing.assert_array_equal(out[-160:], as_pcm16(clip[159_680 - 160 : 159_680] * fade))
    assert out[-1] == 0


def test_48k_is_kept_and_higher_rates_are_resampled_to_48k() -> None:
    at_48k = prepare_reference(wav(square(192_000, 0.5), 48_000))
    assert at_48k.sample_rate == 48_000
    np.testing.assert_array_equal(output_pcm(at_48k), as_pcm16(square(192_000, 0.5)))
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(4 * 96_000) / 96_000)).astype(np.float32)
    resampled = prepare_reference(wav(tone, 96_000))
    assert resampled.sample_rate == 48_000
    assert parse_wav(resampled.wav).frames == 4 * 48_000


# ---------------------------------------------------------------------------- storing


@pytest.fixture(scope="module")
def prepared() -> PreparedReference:
    return prepare_reference(wav(square(64_000, 0.5), 16_000))


def test_store_writes_a_hidden_temp_file_in_place_then_renames_it(tmp_path: Path, prepared: PreparedReference) -> None:
    refs = tmp_path / "shared" / "refs"  # neither level exists yet
    with recording() as calls:
        path = store_reference(prepared, refs)
    assert path == refs / f"{prepared.sha256}.wav"
    assert path.read_bytes() == prepared.wav
    assert path.stat().st_mode & 0o777 == 0o644
    temps = [call.path() for call in calls if call.event == "tempfile.mkstemp"]
    assert len(temps) == 1 and temps[0].parent == refs
    assert re.fullmatch(rf"\.{prepared.sha256[:16]}\.[a-z0-9_]+\.tmp", temps[0].name), temps[0].name
    renames = [(call.path(0), call.path(1)) for call in calls if call.event == "os.rename"]
    assert renames == [(temps[0], path)]
    assert sorted(p.name for p in refs.iterdir()) == [path.name]


def test_a_failed_store_leaves_no_temp_file_and_raises_the_real_error(
    tmp_path: Path, prepared: PreparedReference
) -> None:
    (tmp_path / f"{prepared.sha256}.wav").mkdir()  # os.replace onto a directory fails
    with pytest.raises(IsADirectoryError):
        store_reference(prepared, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{prepared.sha256}.wav"]
