"""Reference intake: decoding every accepted format, trimming, duration window, warnings, bombs, storage."""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gateway.audio.intake import PreparedReference, decode_audio, prepare_reference, store_reference
from gateway.audio.wav import parse_wav, wav_samples
from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from tests.support import flac_with_unknown_length, speech_like_signal


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def encoded(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def engine_rate_samples(ref: PreparedReference) -> int:
    """What the engine counts: length after librosa-style resampling to 16 kHz (ceil)."""
    frames = parse_wav(ref.wav).frames
    return math.ceil(frames * 16000 / ref.sample_rate)


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")],
)
def test_every_accepted_format_becomes_pcm16_mono_wav(fmt: str, subtype: str) -> None:
    ref = prepare_reference(encoded(speech_like_signal(5.0, 48000), 48000, fmt, subtype))
    info = parse_wav(ref.wav)
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (48000, 1, 16)
    assert ref.sample_rate == 48000
    assert ref.duration == pytest.approx(5.0, abs=0.06)  # lossy codecs add a few ms of padding
    assert ref.duration == pytest.approx(info.duration)
    assert ref.warnings == ()
    assert ref.sha256 == hashlib.sha256(ref.wav).hexdigest()


def test_pcm_wav_fast_path_matches_libsndfile() -> None:
    data = encoded(speech_like_signal(4.0, 32000), 32000)
    ours, rate = decode_audio(data)
    theirs, their_rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == their_rate == 32000
    np.testing.assert_array_equal(ours, theirs)


def test_stereo_is_averaged_to_mono() -> None:
    voice = speech_like_signal(5.0, 32000, level=0.8)
    stereo = np.stack([voice, 0.5 * voice], axis=1)
    ref = prepare_reference(encoded(stereo, 32000, "FLAC"))
    samples, _ = wav_samples(ref.wav)
    assert parse_wav(ref.wav).channels == 1
    assert float(np.max(np.abs(samples))) == pytest.approx(0.6, abs=0.002)  # mean of 0.8 and 0.4


def test_48k_float_wav() -> None:
    ref = prepare_reference(encoded(speech_like_signal(6.0, 48000), 48000, "WAV", "FLOAT"))
    assert ref.sample_rate == 48000
    assert parse_wav(ref.wav).bits_per_sample == 16
    assert ref.duration == pytest.approx(6.0, abs=0.01)


def test_96k_is_downsampled_to_48k() -> None:
    ref = prepare_reference(encoded(speech_like_signal(5.0, 96000), 96000, "WAV", "PCM_24"))
    assert ref.sample_rate == 48000
    assert parse_wav(ref.wav).sample_rate == 48000
    assert ref.duration == pytest.approx(5.0, abs=0.01)


def test_leading_and_trailing_silence_is_trimmed_with_a_margin() -> None:
    clip = np.concatenate([silence(1.5, 32000), speech_like_signal(5.0, 32000), silence(2.0, 32000)])
    ref = prepare_reference(encoded(clip, 32000))
    # 5 s of speech plus 50 ms kept on each side, at 10 ms frame resolution.
    assert ref.duration == pytest.approx(5.1, abs=0.02)
    assert ref.trimmed_seconds == pytest.approx(3.4, abs=0.02)


def test_trimming_makes_a_long_padded_clip_acceptable() -> None:
    clip = np.concatenate([silence(4.0, 16000), speech_like_signal(6.0, 16000), silence(4.0, 16000)])
    ref = prepare_reference(encoded(clip, 16000))
    assert 6.0 < ref.duration < 6.2


def test_too_short_reference_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_reference(encoded(speech_like_signal(2.0, 32000), 32000))
    err = caught.value
    assert (err.status, err.code) == (422, "reference_too_short")
    assert "2.0 s after trimming silence" in err.message and "3.0–10.0 s" in err.message
    assert err.extra["duration"] == pytest.approx(2.0, abs=0.01)
    assert (err.extra["min_seconds"], err.extra["max_seconds"]) == (3.0, 10.0)


def test_too_long_reference_is_refused_with_its_duration() -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_reference(encoded(speech_like_signal(12.4, 32000), 32000))
    err = caught.value
    assert (err.status, err.code) == (422, "reference_too_long")
    assert err.message == "reference audio is 12.4 s after trimming silence; the engine accepts 3.0–10.0 s"
    assert err.extra["duration"] == pytest.approx(12.4, abs=0.01)


def test_just_over_the_limit_is_shown_with_two_decimals() -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_reference(encoded(speech_like_signal(10.04, 32000), 32000))
    assert "10.04 s" in caught.value.message


def test_trim_to_max_cuts_a_long_clip() -> None:
    ref = prepare_reference(encoded(speech_like_signal(12.0, 32000), 32000), trim_to_max=True)
    assert 9.9 < ref.duration < 10.0
    assert engine_rate_samples(ref) <= 160_000
    assert any("cut from 12.0 s" in warning for warning in ref.warnings)


def test_custom_window() -> None:
    ref = prepare_reference(encoded(speech_like_signal(4.0, 32000), 32000), min_seconds=1.0, max_seconds=4.5)
    assert ref.duration == pytest.approx(4.0, abs=0.01)
    with pytest.raises(InvalidInput):
        prepare_reference(encoded(speech_like_signal(4.0, 32000), 32000), max_seconds=3.5)


@pytest.mark.parametrize(("seconds", "rate"), [(10.0, 44100), (10.0, 32000), (3.0, 22050), (3.0, 48000)])
def test_clips_on_the_window_edges_land_inside_the_engine_window(seconds: float, rate: int) -> None:
    ref = prepare_reference(encoded(speech_like_signal(seconds, rate), rate))
    assert 48_000 < engine_rate_samples(ref) < 160_000
    assert ref.duration == pytest.approx(seconds, abs=0.021)


def test_silent_reference_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_reference(encoded(silence(5.0, 32000), 32000))
    assert caught.value.code == "reference_silent"


def test_random_bytes_are_unsupported_media() -> None:
    garbage = np.random.default_rng(1).bytes(20_000)
    for data in (garbage, b"RIFF" + garbage, b"OggS" + garbage):
        with pytest.raises(UnsupportedMedia) as caught:
            decode_audio(data)
        assert (caught.value.status, caught.value.code) == (415, "unsupported_audio")
        assert "WAV, FLAC, OGG" in caught.value.message and "MP3" in caught.value.message


def test_other_formats_libsndfile_knows_are_refused() -> None:
    with pytest.raises(UnsupportedMedia):
        decode_audio(encoded(speech_like_signal(4.0, 16000), 16000, "AIFF"))


def test_empty_upload_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_audio(b"")
    assert (caught.value.status, caught.value.code) == (422, "empty_audio")


def test_wav_with_no_samples_is_empty_audio() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_audio(encoded(silence(0.0, 16000), 16000, "FLAC"))
    assert caught.value.code == "empty_audio"


def test_engine_streaming_wav_saved_to_a_file_is_accepted() -> None:
    """A zero-size streaming header (engine-protocol §3.6) that libsndfile would read as empty."""
    pcm = (speech_like_signal(4.0, 32000) * 32767).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 32000, 64000, 2, 16)
    ref = prepare_reference(header + b"data" + struct.pack("<I", 0) + pcm)
    assert ref.duration == pytest.approx(4.0, abs=0.01)


def test_a_wav_cut_short_in_transit_decodes_what_arrived() -> None:
    data = encoded(speech_like_signal(6.0, 16000), 16000)
    samples, rate = decode_audio(data[: 44 + 2 * 80_000])  # header still says 6 s; 5 s arrived
    assert (len(samples), rate) == (80_000, 16000)


def test_a_wav_over_the_decode_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        decode_audio(encoded(speech_like_signal(6.0, 8000), 8000), max_declared_seconds=5.0)
    assert caught.value.extra["max_seconds"] == 5.0 and "6.0 s" in caught.value.message


def _silent_flac(seconds: float, rate: int) -> bytes:
    buffer = io.BytesIO()
    block = np.zeros(rate * 60, dtype=np.int16)
    with sf.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as out:
        for start in range(0, round(seconds * rate), len(block)):
            out.write(block[: round(seconds * rate) - start])
    return buffer.getvalue()


def test_flac_bomb_is_refused_from_its_declared_length_without_decoding() -> None:
    bomb = _silent_flac(20 * 60, 48000)  # 20 min of 48 kHz: 230 MB as float32, a few hundred kB as FLAC
    assert len(bomb) < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as caught:
            decode_audio(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (caught.value.status, caught.value.code) == (413, "audio_too_long")
    assert "1200.0 s" in caught.value.message
    assert peak < 1_000_000



def test_unknown_length_flac_decodes_when_short() -> None:
    samples, rate = decode_audio(flac_with_unknown_length(encoded(speech_like_signal(5.0, 16000), 16000, "FLAC")))
    assert (len(samples), rate) == (80_000, 16000)


def test_unknown_length_flac_stops_decoding_at_the_limit() -> None:
    hidden_bomb = flac_with_unknown_length(_silent_flac(600, 8000))  # 19 MB if decoded in full
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as caught:
            decode_audio(hidden_bomb, max_declared_seconds=10.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "audio_too_long" and "runs past 10 s" in caught.value.message
    assert peak < 4_000_000


def test_clean_reference_has_no_warnings() -> None:
    assert prepare_reference(encoded(speech_like_signal(5.0, 24000), 24000)).warnings == ()


def test_clipping_warning() -> None:
    clipped = np.clip(speech_like_signal(5.0, 32000, level=1.6), -1.0, 1.0)
    warnings = prepare_reference(encoded(clipped, 32000)).warnings
    assert len(warnings) == 1 and "clipped" in warnings[0]


def test_low_level_warning() -> None:
    warnings = prepare_reference(encoded(speech_like_signal(5.0, 32000, level=0.02), 32000)).warnings
    assert len(warnings) == 1 and "very low" in warnings[0] and "dBFS" in warnings[0]


def test_low_sample_rate_warning() -> None:
    ref = prepare_reference(encoded(speech_like_signal(5.0, 8000), 8000))
    assert ref.sample_rate == 8000
    assert len(ref.warnings) == 1 and "8000 Hz" in ref.warnings[0]


def test_identical_content_gives_identical_sha_and_the_file_is_reused(tmp_path: Path) -> None:
    data = encoded(speech_like_signal(5.0, 32000), 32000)
    first, second = prepare_reference(data), prepare_reference(data)
    assert first.sha256 == second.sha256
    path = store_reference(first, tmp_path)
    assert path == tmp_path / f"{first.sha256}.wav"
    assert path.read_bytes() == first.wav
    assert path.stat().st_mode & 0o777 == 0o644  # the engine often runs as another user
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a known mtime a rewrite would change
    assert store_reference(second, tmp_path) == path
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_different_content_gives_a_different_file(tmp_path: Path) -> None:
    a = prepare_reference(encoded(speech_like_signal(5.0, 32000), 32000))
    b = prepare_reference(encoded(speech_like_signal(5.0, 32000, level=0.4), 32000))
    assert a.sha256 != b.sha256
    assert store_reference(a, tmp_path) != store_reference(b, tmp_path)


def test_a_cut_short_file_under_the_name_is_replaced(tmp_path: Path) -> None:
    ref = prepare_reference(encoded(speech_like_signal(5.0, 32000), 32000))
    (tmp_path / f"{ref.sha256}.wav").write_bytes(ref.wav[:1000])
    assert store_reference(ref, tmp_path).read_bytes() == ref.wav


def test_concurrent_stores_end_with_one_intact_file(tmp_path: Path) -> None:
    ref = prepare_reference(encoded(speech_like_signal(8.0, 48000), 48000))
    refs_dir = tmp_path / "refs"  # created on demand
    barrier = threading.Barrier(4)
    results: list[Path] = []

    def store() -> None:
        barrier.wait()
        results.append(store_reference(ref, refs_dir))

    threads = [threading.Thread(target=store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert sorted(p.name for p in refs_dir.iterdir()) == [f"{ref.sha256}.wav"]  # no temp files left
    assert results[0].read_bytes() == ref.wav
