"""Reference intake under adversarial audio (issue 12, item 7; DESIGN §9): every input, however malformed, ends
as a valid PreparedReference or a GatewayError with a 4xx status, and memory stays bounded.

Inputs: random bytes behind every accepted magic number, WAV headers with hostile fields (zero or huge rates,
65,535 channels, odd bit depths and format tags, data sizes of 4 GiB), float WAVs full of NaN and inf, real
WAV/FLAC/OGG/MP3 files truncated or with bytes overwritten, and FLAC bombs (a long silence declaring its
length, and one whose header leaves the length unknown).

The property runs in a child process under RLIMIT_AS: a decoder that allocated for a bomb's declared length
would hit the limit (MemoryError: not a 4xx, so the property fails), and a libsndfile crash takes down the
child, not pytest. Peak Python-tracked memory per input is asserted too (numpy arrays are tracked).
"""

from __future__ import annotations

import functools
import io
import resource
import struct
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audio.intake import PreparedReference, prepare_reference
from gateway.audio.wav import wav_samples
from gateway.errors import GatewayError
from tests.support import REPO_ROOT, flac_with_unknown_length, speech_like_signal

MAX_EXAMPLES = 400
MAX_DECODE_SECONDS = 12.0
#: What one input may allocate (tracked): intake decodes at most MAX_DECODE_SECONDS at up to 192 kHz (9 MB as
#: float32) and holds a few copies of it; a bomb decoded whole would take more.
PEAK_BYTES = 48 * 1024 * 1024
#: Address space of the child: Python + numpy + soxr + libsndfile need ~1 GiB of it; a 3 h FLAC bomb decoded
#: as float64 would need 4 GiB more.
ADDRESS_SPACE_BYTES = 3 * 1024**3


def _encode(seconds: float, rate: int, fmt: str, subtype: str, silent: bool = False) -> bytes:
    signal = np.zeros(int(seconds * rate), dtype=np.float32) if silent else speech_like_signal(seconds, rate, 120.0)
    buffer = io.BytesIO()
    sf.write(buffer, signal, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@functools.cache
def corpus() -> list[bytes]:
    """Real files to mutate: small, so a mutation lands in a header as often as in the audio."""
    files = [
        _encode(4.0, 16000, "WAV", "PCM_16"),
        _encode(4.0, 8000, "WAV", "FLOAT"),
        _encode(4.0, 16000, "FLAC", "PCM_16"),
        _encode(4.0, 16000, "OGG", "VORBIS"),
        _encode(4.0, 16000, "OGG", "OPUS") if "OPUS" in sf.available_subtypes("OGG") else b"OggS",
        _encode(4.0, 16000, "MP3", "MPEG_LAYER_III") if "MP3" in sf.available_formats() else b"ID3",
    ]
    bomb = _silent_flac(8 * 60, 32000)  # 8 min: 61 MB of samples as float32, 123 MB as float64, from ~80 kB
    return [*files, bomb, flac_with_unknown_length(bomb)]


def _silent_flac(seconds: int, rate: int) -> bytes:
    """A FLAC bomb (DESIGN §9), written a second at a time so making it costs no memory."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as out:
        second = np.zeros(rate, dtype=np.float32)
        for _ in range(seconds):
            out.write(second)
    return buffer.getvalue()



def _wav(tag: int, channels: int, rate: int, bits: int, declared: int, body: bytes, riff_size: int | None) -> bytes:
    block_align = max(1, channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block_align) & 0xFFFFFFFF, block_align, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", declared) + body
    size = len(chunks) + 4 if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", size) + b"WAVE" + chunks


def _float_body(values: list[float]) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


_edge_rates = st.sampled_from([0, 1, 999, 1000, 8000, 44100, 192000, 192001, 2**31 - 1, 2**32 - 1])
_edge_sizes = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
_hostile_wav = st.builds(
    _wav,
    tag=st.sampled_from([1, 3, 0xFFFE, 0, 2, 0x55, 0xFFFF]),
    channels=st.sampled_from([0, 1, 2, 8, 9, 255, 65535]),
    rate=_edge_rates,
    bits=st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64, 65535]),
    declared=_edge_sizes,
    body=st.one_of(
        st.binary(max_size=4096),
        st.lists(st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5, -0.5, 1e30]), max_size=2048)
        .map(_float_body),
    ),
    riff_size=st.one_of(st.none(), _edge_sizes),
)
# a float WAV long enough to pass the duration checks, with NaN/inf sprinkled over speech: cleaned, not refused
_nan_speech = st.lists(st.integers(0, 63_999), min_size=1, max_size=200).map(
    lambda positions: _wav(3, 1, 16000, 32, 64_000 * 4, _with_nan(positions), None)
)


def _with_nan(positions: list[int]) -> bytes:
    signal = speech_like_signal(4.0, 16000, 120.0).astype(np.float32)
    signal[positions] = np.float32("nan")
    return signal.tobytes()


def _mutate(original: bytes, cut: int, patches: list[tuple[int, int]]) -> bytes:
    data = bytearray(original[: max(0, len(original) - cut)] if cut else original)
    for position, value in patches:
        if data:
            data[position % len(data)] = value
    return bytes(data)


_mutated_file = st.builds(
    _mutate,
    st.integers(0, 7).map(lambda index: corpus()[index]),  # built in the child only, not at collection
    cut=st.one_of(st.just(0), st.integers(1, 200_000)),
    patches=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),  # mostly the headers
)
_magic_then_noise = st.builds(
    lambda magic, rest: magic + rest,
    st.sampled_from([b"RIFF", b"RIFX", b"RF64", b"riff", b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b""]),
    st.binary(max_size=2048),
)
AUDIO = st.one_of(_magic_then_noise, _hostile_wav, _nan_speech, _mutated_file)


def _check(data: bytes) -> None:
    tracemalloc.reset_peak()
    try:
        ref = prepare_reference(data, min_seconds=3.0, max_seconds=10.0, max_decode_seconds=MAX_DECODE_SECONDS)
    except GatewayError as exc:
        assert 400 <= exc.status < 500, f"{exc.status} {exc.code}: {exc.message}"
    else:
        assert isinstance(ref, PreparedReference)
        samples, rate = wav_samples(ref.wav)
        assert rate == ref.sample_rate and 1000 <= rate <= 48000
        assert 3.0 - 0.05 <= len(samples) / rate <= 10.0 + 0.05
        assert np.isfinite(samples).all() and np.abs(samples).max() > 0
    peak = tracemalloc.get_traced_memory()[1]
    assert peak < PEAK_BYTES, f"one input took {peak / 1e6:.0f} MB"


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=AUDIO)
def intake_property(data: bytes) -> None:
    _check(data)


def main() -> None:
    """The child: the property under an address-space limit."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    warnings.simplefilter("error", RuntimeWarning)  # numpy overflow on hostile samples: a bug, not noise
    tracemalloc.start()
    for bomb in corpus()[-2:]:  # the bombs, unmutated, every run
        _check(bomb)
    intake_property()
    print("intake property held")


def test_every_input_gets_a_4xx_or_a_valid_reference_in_bounded_memory() -> None:
    child = subprocess.run([sys.executable, "-c", "from tests.test_fuzz_intake import main; main()"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, f"exit {child.returncode}\n{child.stdout[-3000:]}\n{child.stderr[-6000:]}"
    assert "intake property held" in child.stdout


if __name__ == "__main__":
    main()
