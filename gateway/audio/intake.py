"""Reference intake: decode an uploaded recording, check it, normalise it to PCM16 mono and store it by content.

The engine reads references by path from a shared directory and caches by path string, so every reference
is written once under its content hash and never rewritten (DESIGN §4, §8; engine-protocol §3.10, §5).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from gateway.audio.wav import parse_wav, pcm16_wav, wav_samples
from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

ACCEPTED_FORMATS = "WAV, FLAC, OGG (Vorbis or Opus) or MP3"
# libsndfile major formats we let through; anything else it can parse is refused (smaller attack surface).
_ALLOWED_MAJOR_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "MP3"})
# libsndfile reports SF_COUNT_MAX frames when the length is unknown (e.g. a FLAC written to a pipe).
_UNKNOWN_LENGTH_FRAMES = 2**62
MAX_CHANNELS = 8
MIN_SOURCE_RATE = 1000
MAX_SOURCE_RATE = 192_000
# Decode in blocks of this many samples (all channels) so a many-channel file never needs a big buffer.
_DECODE_BLOCK_SAMPLES = 1 << 18

MAX_OUTPUT_RATE = 48_000  # the engine resamples to 16 kHz anyway; more only costs disk and decode time
# The engine measures the reference after resampling to 16 kHz with ceil() rounding; staying 20 ms inside
# its window means its own check can never disagree with ours.
ENGINE_WINDOW_MARGIN = 0.02
# Silence trimming: frames of 10 ms, "silent" = 40 dB below the loudest frame, keep 50 ms around speech.
_TRIM_FRAME_SECONDS = 0.01
_TRIM_TOP_DB = 40.0
_TRIM_KEEP_SECONDS = 0.05
_FADE_SECONDS = 0.01  # applied where a clip is cut mid-signal, to avoid a click
# Quality thresholds.
SILENT_PEAK_DBFS = -60.0
LOW_PEAK_DBFS = -25.0
LOW_RMS_DBFS = -45.0
CLIP_LEVEL = 0.99
CLIP_WARN_SHARE = 0.001
LOW_RATE_WARN = 16_000


@dataclass(frozen=True)
class PreparedReference:
    wav: bytes  # PCM16 mono RIFF WAV, ready for the engine
    sha256: str  # hex digest of `wav` (the content address)
    sample_rate: int
    duration: float  # seconds, after trimming
    trimmed_seconds: float  # leading+trailing silence removed
    warnings: tuple[str, ...]  # human-readable quality warnings
    # (start, end) seconds of the upload that were kept: what a waveform view marks; None if not measured
    speech_span: tuple[float, float] | None = None


def _unsupported(detail: str = "") -> UnsupportedMedia:
    reason = f" ({detail})" if detail else ""
    return UnsupportedMedia(
        f"could not decode the audio{reason}; accepted formats: {ACCEPTED_FORMATS}", code="unsupported_audio"
    )


def _too_long(seconds: float | None, limit: float) -> PayloadTooLarge:
    """`seconds` is the declared length, or None when decoding ran past the limit (header lied or unknown)."""
    length = f"is {seconds:.1f} s long" if seconds is not None else f"runs past {limit:g} s"
    return PayloadTooLarge(
        f"the audio {length}; at most {limit:g} s of audio is accepted", code="audio_too_long", max_seconds=limit
    )


def _looks_like_audio(data: bytes) -> bool:
    """Magic-byte sniff, so libsndfile's parsers for exotic formats never see arbitrary uploads."""
    head = data[:4]
    if head in (b"RIFF", b"RIFX", b"RF64", b"riff", b"fLaC", b"OggS") or head[:3] == b"ID3":
        return True
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # MPEG audio frame sync


def _decode_pcm_wav(data: bytes, max_seconds: float) -> tuple[np.ndarray, int] | None:
    """Integer PCM WAV via our own parser: faster than libsndfile, and it reads zero-size streaming
    headers (the engine's streamed WAV saved to a file) that libsndfile reports as empty."""
    try:
        info = parse_wav(data)
    except ValueError:
        return None  # float, ADPCM, truncated ...: let libsndfile try
    if info.channels > MAX_CHANNELS or not MIN_SOURCE_RATE <= info.sample_rate <= MAX_SOURCE_RATE:
        raise _unsupported(f"{info.channels} channels at {info.sample_rate} Hz")
    if info.duration > max_seconds:
        raise _too_long(info.duration, max_seconds)
    return wav_samples(data)


class _ForwardOnlySoundFile(sf.SoundFile):  # type: ignore[misc]  # soundfile ships no py.typed
    """A SoundFile that reads strictly forward.

    soundfile seeks back to "current position + frames read" after every read; libsndfile cannot seek in
    a FLAC whose header leaves the length unknown (written to a pipe), so those reads fail. Reporting the
    file as non-seekable makes soundfile skip those seeks; libsndfile itself could still seek while
    opening the file, which is all it needs.
    """

    def seekable(self) -> bool:
        return False


def _decode_with_soundfile(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    try:
        with _ForwardOnlySoundFile(io.BytesIO(data)) as f:
            if f.format not in _ALLOWED_MAJOR_FORMATS:
                raise _unsupported(f"{f.format} files are not accepted")
            if f.channels > MAX_CHANNELS or not MIN_SOURCE_RATE <= f.samplerate <= MAX_SOURCE_RATE:
                raise _unsupported(f"{f.channels} channels at {f.samplerate} Hz")
            rate = int(f.samplerate)
            max_frames = int(max_seconds * rate)
            declared = int(f.frames)
            # The FLAC bomb: refuse on the declared length before decoding a single block.
            if declared < _UNKNOWN_LENGTH_FRAMES and declared > max_frames:
                raise _too_long(declared / rate, max_seconds)
            block_frames = max(1, _DECODE_BLOCK_SAMPLES // f.channels)
            blocks: list[np.ndarray] = []
            decoded = 0
            while decoded <= max_frames:  # one frame past the limit proves the header lied
                block = f.read(min(block_frames, max_frames + 1 - decoded), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(block.mean(axis=1, dtype=np.float32) if f.channels > 1 else block[:, 0])
                decoded += len(block)
            if decoded > max_frames:
                raise _too_long(None, max_seconds)
    except sf.SoundFileError as exc:  # LibsndfileError and friends: garbage or a corrupt stream
        raise _unsupported() from exc
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return samples, rate


def decode_audio(data: bytes, *, max_declared_seconds: float = 120.0) -> tuple[np.ndarray, int]:
    """Any of wav/flac/ogg/mp3 → (float32 mono, sample rate), never decoding more than the limit.

    Refuses before decoding when the declared length is over the limit (413 `audio_too_long`), and stops
    decoding at the limit when the header understates the length or leaves it unknown.
    """
    if not data:
        raise InvalidInput("the audio file is empty", code="empty_audio")
    if not _looks_like_audio(data):
        raise _unsupported()
    decoded = _decode_pcm_wav(data, max_declared_seconds) if data[:4] == b"RIFF" else None
    samples, rate = decoded if decoded is not None else _decode_with_soundfile(data, max_declared_seconds)
    if samples.size == 0:
        raise InvalidInput("the audio contains no samples", code="empty_audio")
    if not np.isfinite(samples).all():  # float WAVs can carry NaN/inf; they would poison every level
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    # float files may hold values far past full scale (1e30 squares to inf in the level measures); PCM16
    # output clips at full scale anyway, so clip here once (found by tests/test_fuzz_intake.py)
    return np.clip(samples, -1.0, 1.0, out=samples), rate


def _dbfs(level: float) -> float:
    return 20.0 * float(np.log10(max(level, 1e-10)))


def _speech_bounds(samples: np.ndarray, rate: int) -> tuple[int, int]:
    """[start, end) of the span louder than the trim threshold, widened by the keep margin."""
    hop = max(1, round(_TRIM_FRAME_SECONDS * rate))
    n_frames = -(-len(samples) // hop)
    padded = np.zeros(n_frames * hop, dtype=np.float32)
    padded[: len(samples)] = samples
    frame_rms = np.sqrt(np.mean(np.square(padded.reshape(n_frames, hop)), axis=1))
    loud = np.flatnonzero(frame_rms >= frame_rms.max() * 10.0 ** (-_TRIM_TOP_DB / 20.0))
    keep = round(_TRIM_KEEP_SECONDS * rate)
    start = max(0, int(loud[0]) * hop - keep)
    end = min(len(samples), (int(loud[-1]) + 1) * hop + keep)
    return start, end


def _fade_out(samples: np.ndarray, rate: int) -> np.ndarray:
    n = min(len(samples), round(_FADE_SECONDS * rate))
    faded = samples.copy()
    faded[len(faded) - n :] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return faded


def _format_seconds(seconds: float, low: float, high: float) -> str:
    """One decimal, unless rounding would make an out-of-range value look in range (10.04 → "10.04")."""
    short = f"{seconds:.1f}"
    return f"{seconds:.2f}" if low <= float(short) <= high else short


def _quality_warnings(samples: np.ndarray, source_rate: int) -> list[str]:
    warnings: list[str] = []
    clipped_share = float(np.count_nonzero(np.abs(samples) >= CLIP_LEVEL)) / len(samples)
    if clipped_share >= CLIP_WARN_SHARE:
        warnings.append(
            f"the reference looks clipped ({clipped_share:.1%} of samples at full scale); "
            "distortion will be cloned too"
        )
    peak_db = _dbfs(float(np.max(np.abs(samples))))
    rms_db = _dbfs(float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))))
    if peak_db < LOW_PEAK_DBFS or rms_db < LOW_RMS_DBFS:
        warnings.append(
            f"the reference level is very low (peak {peak_db:.1f} dBFS, RMS {rms_db:.1f} dBFS); "
            "the cloned voice may be noisy"
        )
    if source_rate < LOW_RATE_WARN:
        warnings.append(
            f"the reference is sampled at {source_rate} Hz; below {LOW_RATE_WARN} Hz the engine gets "
            "little high-frequency detail and the clone may sound muffled"
        )
    return warnings


def _fit_duration(
    samples: np.ndarray, rate: int, min_seconds: float, max_seconds: float, trim_to_max: bool
) -> tuple[np.ndarray, list[str]]:
    """Enforce [min, max] on the trimmed clip, then land a margin inside the engine's window."""
    duration = len(samples) / rate
    warnings: list[str] = []
    shown = _format_seconds(duration, min_seconds, max_seconds)
    accepted = f"the engine accepts {min_seconds:.1f}–{max_seconds:.1f} s"
    too_short, too_long = duration < min_seconds, duration > max_seconds and not trim_to_max
    if too_short or too_long:
        raise InvalidInput(
            f"reference audio is {shown} s after trimming silence; {accepted}",
            code="reference_too_short" if too_short else "reference_too_long",
            duration=round(duration, 3),
            min_seconds=min_seconds,
            max_seconds=max_seconds,
        )
    low = int(np.ceil((min_seconds + ENGINE_WINDOW_MARGIN) * rate))
    high = int((max_seconds - ENGINE_WINDOW_MARGIN) * rate)
    if len(samples) > high:
        if duration > max_seconds:
            warnings.append(f"the reference was cut from {duration:.1f} s to the first {high / rate:.2f} s")
        samples = _fade_out(samples[:high], rate)
    elif len(samples) < low:  # at most 20 ms of trailing silence, so the engine's rounding cannot refuse it
        samples = np.concatenate([samples, np.zeros(low - len(samples), dtype=np.float32)])
    return samples, warnings


def prepare_reference(
    data: bytes,
    *,
    min_seconds: float = 3.0,
    max_seconds: float = 10.0,
    trim_to_max: bool = False,
    max_decode_seconds: float = 120.0,
) -> PreparedReference:
    """Decode, trim silence, check the duration and level, and normalise to PCM16 mono WAV (≤ 48 kHz)."""
    samples, source_rate = decode_audio(data, max_declared_seconds=max_decode_seconds)
    peak = float(np.max(np.abs(samples)))
    if _dbfs(peak) < SILENT_PEAK_DBFS:
        raise InvalidInput(
            f"the reference audio is silent (peak {_dbfs(peak):.1f} dBFS)", code="reference_silent"
        )
    start, end = _speech_bounds(samples, source_rate)
    trimmed_seconds = (len(samples) - (end - start)) / source_rate
    speech = samples[start:end]
    warnings = _quality_warnings(speech, source_rate)

    rate = source_rate
    speech_seconds = len(speech) / source_rate  # before a cut to the maximum or the engine-margin padding
    if rate > MAX_OUTPUT_RATE:
        speech = soxr.resample(speech, rate, MAX_OUTPUT_RATE).astype(np.float32, copy=False)
        rate = MAX_OUTPUT_RATE
    speech, cut_warnings = _fit_duration(speech, rate, min_seconds, max_seconds, trim_to_max)
    warnings.extend(cut_warnings)

    wav = pcm16_wav(speech, rate)
    kept_seconds = min(speech_seconds, len(speech) / rate)
    return PreparedReference(
        wav=wav,
        sha256=hashlib.sha256(wav).hexdigest(),
        sample_rate=rate,
        duration=len(speech) / rate,
        trimmed_seconds=trimmed_seconds,
        warnings=tuple(warnings),
        speech_span=(start / source_rate, start / source_rate + kept_seconds),
    )


def store_reference(ref: PreparedReference, refs_dir: Path) -> Path:
    """Write `refs_dir/<sha256>.wav` once; later calls with the same content only stat it.

    Skipping the existing file matters: an atomic rename onto an existing file costs ~2.5 ms on ext4
    (DESIGN §8). New files go through a temp file + os.replace, so two gateway processes (or threads)
    storing the same reference both end with one intact file and the engine never sees a partial one.
    """
    path = refs_dir / f"{ref.sha256}.wav"
    try:
        if path.stat().st_size == len(ref.wav):
            return path
    except FileNotFoundError:
        pass
    # A size mismatch (e.g. a file cut short by a crash on another host) falls through and is replaced.
    refs_dir.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=refs_dir, prefix=f".{ref.sha256[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(ref.wav)
            out.flush()
            # The existence check above trusts whatever sits under this name, so it must be complete
            # on disk before it gets the name; this runs once per distinct reference.
            os.fsync(out.fileno())
            # mkstemp creates 0600; the engine usually runs as another user and must read the file.
            os.fchmod(out.fileno(), 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
