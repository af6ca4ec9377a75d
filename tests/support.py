"""Test helpers shared by every test module: run a CPU engine process, make references, check audio.

Engines always run as real subprocesses on real sockets (`python -m gateway.cpu_engine`), so a test
sees exactly what a gateway would see, including crashes and dropped connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import parselmouth
import soundfile as sf

from gateway.audio.intake import PreparedReference
from gateway.engine.pool import EnginePool
from gateway.engine.types import SynthesisRequest
from gateway.metrics import Metrics
from gateway.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent  #: this checkout: subprocesses import its `gateway`


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it; tiny race accepted for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float) -> None:
    """Poll `GET {url}/openapi.json` (the engine's only probe that touches no model) until it answers 200."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/openapi.json", timeout=2.0)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"engine at {url} not ready after {timeout:.0f} s ({last_error})")


@dataclass
class EngineProcess:
    """A running CPU engine. `args` is the full command line, so `restart` can repeat it exactly."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    args: list[str]
    log_path: Path = field(default_factory=lambda: _new_log_path())
    ready_timeout: float = 60.0

    def log(self) -> str:
        """Everything the engine wrote to stdout/stderr so far (handy in assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, wait for a graceful exit, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.wait()

    def kill(self) -> None:
        """SIGKILL now (a hard crash as the client sees it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Start again on the same port with the same command line and wait until it answers."""
        self.stop()
        self.proc = _spawn(self.args, self.log_path)
        _wait_started(self, self.ready_timeout)


def _new_log_path() -> Path:
    handle, name = tempfile.mkstemp(prefix="cpu-engine-", suffix=".log")
    os.close(handle)
    return Path(name)


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("ab") as log:  # the child keeps its own descriptor; a file never blocks like a pipe
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)


def _wait_started(engine: EngineProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if engine.proc.poll() is not None:
            raise RuntimeError(f"engine exited with code {engine.proc.returncode} before it was ready:\n{engine.log()}")
        try:
            wait_ready(engine.url, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                engine.kill()
                raise TimeoutError(f"engine at {engine.url} not ready after {timeout:.0f} s:\n{engine.log()}") from None


@contextmanager
def running_engine(
    *args: str, flavor: str = "v2", port: int | None = None, ready_timeout: float = 60
) -> Iterator[EngineProcess]:
    """Start `python -m gateway.cpu_engine --flavor ... *args`, wait until ready, always stop it afterwards."""
    port = port or free_port()
    command = [sys.executable, "-m", "gateway.cpu_engine", "--flavor", flavor,
               "--host", "127.0.0.1", "--port", str(port), *args]
    log_path = _new_log_path()
    engine = EngineProcess(url=f"http://127.0.0.1:{port}", port=port, proc=_spawn(command, log_path), args=command,
                           log_path=log_path, ready_timeout=ready_timeout)
    try:
        _wait_started(engine, ready_timeout)
        yield engine
    finally:
        engine.stop()
        engine.log_path.unlink(missing_ok=True)


def speech_like_signal(
    seconds: float, rate: int, f0: float = 120.0, *, level: float = 0.5, silent_gaps: bool = False
) -> np.ndarray:
    """Voiced, speech-like mono float32: harmonics at a vibrato-modulated F0 under a syllable envelope.

    The F0 wobbles ±2 % around `f0` symmetrically, so the median F0 of the signal is `f0`; the peak is
    `level`. Four "syllables" per second: by default the envelope never falls below 20 %, so the clip
    has no silent edges for reference intake to trim and its duration stays exactly `seconds`; with
    `silent_gaps` each syllable is followed by a silent dip, as in real speech (what `make_reference`
    gives the engines).
    """
    t = np.arange(int(round(seconds * rate))) / rate
    f0_track = f0 * (1.0 + 0.02 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0_track) / rate
    signal = np.zeros_like(t)
    for k in range(1, 40):
        if k * f0 * 1.05 >= min(rate / 2, 5000):
            break
        formant_gain = 1.0 + 1.5 * np.exp(-(((k * f0) - 700.0) / 300.0) ** 2)  # a crude first formant
        signal += formant_gain / k * np.sin(k * phase)
    if silent_gaps:
        syllables = np.clip(np.sin(np.pi * 4.0 * t), 0.0, None) ** 0.6  # 4 bumps per second, silent gaps
    else:
        syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t)  # 4 bumps per second, never silent
    out = signal * syllables
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    return (level * out / (peak or 1.0)).astype(np.float32)


TTS_TEXT = "Hello world, this is a short test."


def tts_params(reference: Path, text: str = TTS_TEXT, **overrides: Any) -> dict[str, Any]:
    """An api_v2 `/tts` body (JSON or query) for `reference` with English text and prompt; `overrides` win."""
    return {"text": text, "text_lang": "en", "ref_audio_path": str(reference), "prompt_lang": "en",
            "prompt_text": "A reference.", **overrides}


def make_reference(
    path: Path,
    seconds: float = 5.0,
    rate: int = 32000,
    f0: float = 120.0,
    channels: int = 1,
    subtype: str = "PCM_16",
    fmt: str | None = None,
) -> Path:
    """Write a speech-like reference (median F0 = `f0`) with soundfile; format from `fmt` or the suffix."""
    mono = speech_like_signal(seconds, rate, f0, silent_gaps=True)
    data = mono if channels == 1 else np.stack([mono * (1.0 - 0.1 * c) for c in range(channels)], axis=1)
    fmt = (fmt or path.suffix.lstrip(".") or "WAV").upper()
    if fmt == "OGG" and subtype.startswith("PCM"):
        subtype = "VORBIS"
    if fmt in ("MP3", "MPEG"):
        fmt, subtype = "MP3", "MPEG_LAYER_III"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, format=fmt, subtype=subtype)
    return path


def prepared_reference(seconds: float = 3.0, rate: int = 32000, freq: float = 220.0) -> PreparedReference:
    """A real PCM16 mono WAV (a sine tone at `freq`) wrapped the way reference intake hands it to the voice
    store: no file, no engine. Different `freq` values give different content, hence different hashes."""
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()
    return PreparedReference(wav=wav, sha256=hashlib.sha256(wav).hexdigest(), sample_rate=rate, duration=seconds,
                             trimmed_seconds=0.0, warnings=())


def flac_with_unknown_length(flac: bytes) -> bytes:
    """Zero the STREAMINFO total-samples field, as a FLAC written to a pipe has it (its length is unknown)."""
    patched = bytearray(flac)
    streaminfo = 8  # after "fLaC" and the 4-byte metadata block header
    patched[streaminfo + 13] &= 0xF0
    patched[streaminfo + 14 : streaminfo + 18] = bytes(4)
    return bytes(patched)


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode audio bytes with soundfile: (float32 samples, shape (n,) mono or (n, channels); rate)."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return samples, int(rate)


def measured_median_f0(audio: np.ndarray, rate: int) -> float:
    """Median F0 over voiced frames, by Praat's cross-correlation tracker (the engine uses its autocorrelation one).

    Not WORLD's Harvest: it halves the F0 in a quarter of the frames of a high female voice and reads Piper's
    voice 35 % high, so it would hide exactly the errors the pitch tests are there to catch.
    """
    sound = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=float(rate))
    f0 = sound.to_pitch_cc(time_step=0.01, pitch_floor=60.0, pitch_ceiling=700.0).selected_array["frequency"]
    voiced = f0[f0 > 0]
    assert voiced.size > 20, "too little voiced speech to measure"
    return float(np.median(voiced))


def rms(samples: np.ndarray) -> float:
    """Root mean square level in float64 (0.0 for no samples)."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def assert_speech(
    samples: np.ndarray, rate: int, *, expected_rate: int, min_seconds: float, max_seconds: float
) -> None:
    """Mono, at the expected rate, of plausible length, and clearly louder than silence."""
    assert rate == expected_rate, f"sample rate {rate}, expected {expected_rate}"
    assert samples.ndim == 1, f"expected mono audio, got shape {samples.shape}"
    seconds = len(samples) / rate
    assert min_seconds <= seconds <= max_seconds, f"duration {seconds:.2f} s outside [{min_seconds}, {max_seconds}]"
    level = rms(samples)
    assert level > 0.01, f"audio is (nearly) silent: RMS {level:.5f}"


def wav_stream_header(rate: int) -> bytes:
    """The exact 44-byte header api_v2 streams first for WAV: PCM mono 16-bit, every size field 0
    (RIFF size 36, data size 0). Built field by field here, independently of the engine's code."""
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
                       b"data", 0)


def pcm16(data: bytes) -> np.ndarray:
    """Bare int16 little-endian PCM (api_v2 `raw`, or a WAV stream after its header) as float32."""
    assert len(data) % 2 == 0, f"odd number of PCM bytes: {len(data)}"
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def read_until_abort(method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, bytes]:
    """Send a request whose body the server cuts off; assert it was cut off and return what arrived."""
    received = bytearray()
    kwargs.setdefault("timeout", 60)
    with httpx.stream(method, url, **kwargs) as response:
        try:
            for chunk in response.iter_raw():
                received.extend(chunk)
        except httpx.RemoteProtocolError:
            return response, bytes(received)
    raise AssertionError(f"the body was complete ({len(received)} bytes), expected it to be cut off")


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached within {timeout} s"
        time.sleep(interval)


def engine_stats(url: str) -> dict[str, Any]:
    """`GET /_stats` of an engine started with `--debug-routes` (blocking: use `asyncio.to_thread` in async tests)."""
    return dict(httpx.get(f"{url}/_stats", timeout=10).json())


def set_engine_faults(url: str, **changes: Any) -> dict[str, Any]:
    """`POST /_faults` (keys left out keep their value); returns the engine's fault settings afterwards."""
    response = httpx.post(f"{url}/_faults", json=changes, timeout=10)
    response.raise_for_status()
    return dict(response.json())


async def engine_stats_async(url: str) -> dict[str, Any]:
    """`GET /_stats` without blocking the event loop (for conditions polled inside async tests)."""
    async with httpx.AsyncClient(timeout=10) as client:
        return dict((await client.get(f"{url}/_stats")).json())


async def wait_until_async(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> None:
    """Like wait_until, for async tests: `condition` may return a bool or an awaitable of one."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"condition not reached within {timeout} s"
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------- pool and gateway helpers

POOL_TEXT = "A short sentence for the pool."


def synthesis_request(ref: Path, text: str = POOL_TEXT, **fields: Any) -> SynthesisRequest:
    """A pool request with an English prompt for the reference at `ref` (fields override anything)."""
    values: dict[str, Any] = {"text": text, "text_language": "en", "reference_path": str(ref),
                              "prompt_text": "The reference words.", "prompt_language": "en", **fields}
    return SynthesisRequest(**values)


def pool_settings(engines: Sequence[EngineProcess | str], **overrides: Any) -> Settings:
    """Settings for pool tests: short probe interval and cooldowns, no per-character read timeout."""
    values: dict[str, Any] = {
        "engines": [engine if isinstance(engine, str) else engine.url for engine in engines],
        "connect_timeout": 1.0,
        "read_timeout": 20.0,
        "read_timeout_per_char": 0.0,
        "max_queue_wait": 30.0,
        "probe_interval": 0.2,
        "cooldown_seconds": 0.5,
        "cooldown_max_seconds": 2.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def started_pool(
    engines: Sequence[EngineProcess | str], metrics: Metrics | None = None, **overrides: Any
) -> AsyncIterator[EnginePool]:
    """A started EnginePool over `engines` (processes or URLs), closed afterwards."""
    pool = EnginePool(pool_settings(engines, **overrides), metrics)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


def assert_error(response: httpx.Response, status: int, code: str, *, contains: str = "") -> dict[str, Any]:
    """The one error envelope: status, code, a message containing `contains`, the request id echoed."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert contains.lower() in error["message"].lower(), error
    assert error["request_id"] == response.headers["x-request-id"]
    return error
