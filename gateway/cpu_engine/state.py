"""Engine-wide state: loaded model version and weights, the one-at-a-time lock, reference checks, stats.

Like the real engines, everything here is global to the process: a weight switch or reference change
by one client applies to every later request (engine-protocol.md §6).
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass, field
from typing import Any

import soundfile as sf

from gateway.cpu_engine.faults import FaultController
from gateway.languages import VERSION_SAMPLE_RATES, languages_for_version

#: The real engine's OSError text (English locale) for a reference outside 3-10 s (§5).
REFERENCE_RANGE_MESSAGE = "Reference audio is outside the 3-10 second range, please choose another one!"
# The engine decodes with librosa at 16 kHz and accepts 48000..160000 samples inclusive.
_REFERENCE_RATE = 16000
_REFERENCE_MIN_SAMPLES = 48000
_REFERENCE_MAX_SAMPLES = 160000

#: Versions a SoVITS file name can announce; the longest match wins (v2ProPlus contains v2Pro and v2).
VERSION_TOKENS: tuple[str, ...] = ("v2ProPlus", "v2Pro", "v4", "v3", "v2", "v1")
VERSIONS_NEEDING_PROMPT = ("v3", "v4")


class EngineFailure(Exception):
    """An error the engine reports as `{"message": "tts failed", "Exception": str(error)}` (or an abort)."""


def version_from_sovits_path(path: str) -> str:
    """The model version a SoVITS weights file stands for, read from its file name (default v2)."""
    name = os.path.basename(path)
    found = [token for token in VERSION_TOKENS if token in name]
    return max(found, key=len) if found else "v2"


def missing_file_error(path: Any) -> OSError | TypeError:
    """The exception the engine's loaders (open, torch.load, librosa) raise for an absent or missing path."""
    if not isinstance(path, str):
        return TypeError(f"expected str, bytes or os.PathLike object, not {type(path).__name__}")
    return FileNotFoundError(2, "No such file or directory", path)


def weights_file_problem(path: Any) -> str | None:
    """Why a weights path cannot be loaded (the engine's exception text), or None when the file exists."""
    return None if isinstance(path, str) and os.path.isfile(path) else str(missing_file_error(path))


def reference_samples_at_16k(path: str) -> int:
    """Decode the whole file (as the engine does) and count its length after resampling to 16 kHz.

    librosa's resampler fixes the output length to ceil(frames * 16000 / rate), so counting frames
    while decoding in blocks gives the engine's exact number without holding the audio in memory.
    """
    with sf.SoundFile(path) as audio:
        rate = int(audio.samplerate)
        frames = sum(len(block) for block in audio.blocks(blocksize=1 << 16, dtype="float32"))
    return math.ceil(frames * _REFERENCE_RATE / rate)


def check_reference_duration(path: str) -> None:
    """Raise the engine's 3-10 s error (as an EngineFailure) or a decoder error for unreadable audio."""
    try:
        samples = reference_samples_at_16k(path)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as exc:
        raise EngineFailure(str(exc)) from exc
    if not _REFERENCE_MIN_SAMPLES <= samples <= _REFERENCE_MAX_SAMPLES:
        raise EngineFailure(REFERENCE_RANGE_MESSAGE)


def check_reference_readable(path: Any) -> None:
    """api.py's only reference check: the file must exist and decode (no duration rule)."""
    if not isinstance(path, str) or not os.path.exists(path):
        raise EngineFailure(str(missing_file_error(path)))
    try:
        with sf.SoundFile(path) as audio:
            audio.read(frames=1)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise EngineFailure(str(exc)) from exc


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


class Ticket:
    """One request counted as in flight; `leave` is idempotent so streams can hand it around."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._open = True

    def leave(self) -> None:
        if self._open:
            self._open = False
            self._stats.in_flight -= 1


@dataclass
class Stats:
    """Counters for `GET /_stats`; touched only from the event loop thread, so no locking is needed."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    set_weights_calls: int = 0
    #: `aux_ref_audio_paths` of the latest admitted api_v2 synthesis
    aux_ref_audio_paths: list[str] = field(default_factory=list)

    def enter(self) -> Ticket:
        """Count a request as in flight from handler entry, i.e. before it waits for the engine lock."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return Ticket(self)


@dataclass
class DefaultReference:
    """api.py's server-side default reference (`-dr/-dt/-dl`, `/change_refer`)."""

    path: str | None = ""
    text: str | None = ""
    language: str | None = ""

    def is_ready(self) -> bool:
        return all(value not in (None, "") for value in (self.path, self.text, self.language))


@dataclass
class EngineState:
    """The loaded model and everything shared by all requests of this engine process."""

    flavor: str
    version: str
    synthesizer: Any
    faults: FaultController
    default_reference: DefaultReference = field(default_factory=DefaultReference)
    default_cut_punc: str = ""
    stream_mode: str = "close"
    media_type: str = "wav"
    gpt_weights: str | None = None
    sovits_weights: str | None = None
    # Like api_v2's prompt cache: the last reference that loaded successfully is not re-checked.
    cached_reference: str | None = None
    stats: Stats = field(default_factory=Stats)
    # One request at a time: every synthesis, weight switch and reference change takes this lock.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Mode-0 syntheses running now (`--stall-probes` holds other routes back while one runs, like api_v2).
    whole_running: int = 0
    whole_idle: asyncio.Event = field(default_factory=_set_event)

    def whole_started(self) -> None:
        self.whole_running += 1
        self.whole_idle.clear()

    def whole_ended(self) -> None:
        self.whole_running -= 1
        if not self.whole_running:
            self.whole_idle.set()

    @property
    def languages(self) -> tuple[str, ...]:
        return languages_for_version(self.version)

    @property
    def output_rate(self) -> int:
        return VERSION_SAMPLE_RATES[self.version]

    def load_reference(self, path: str) -> None:
        """api_v2 reference handling: skip if cached, else existence + 3-10 s check, then cache the path."""
        if path == self.cached_reference:
            return
        if not os.path.exists(path):
            raise EngineFailure(f"{path} not exists")
        check_reference_duration(path)
        self.cached_reference = path

    def set_refer_audio(self, path: str | None) -> None:
        """`/set_refer_audio`: always reloads (no cache check, no existence message, decoder errors)."""
        if not isinstance(path, str) or not os.path.exists(path):
            raise EngineFailure(str(missing_file_error(path)))
        check_reference_duration(path)
        self.cached_reference = path

    def set_gpt_weights(self, path: str) -> None:
        problem = weights_file_problem(path)
        if problem is not None:
            raise EngineFailure(problem)
        self.gpt_weights = path

    def set_sovits_weights(self, path: str) -> None:
        """Switch SoVITS weights; the file name decides the version, hence languages and output rate."""
        problem = weights_file_problem(path)
        if problem is not None:
            raise EngineFailure(problem)
        self.sovits_weights = path
        self.version = version_from_sovits_path(path)

    def stats_snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.stats.requests,
            "in_flight": self.stats.in_flight,
            "max_in_flight": self.stats.max_in_flight,
            "version": self.version,
            "gpt_weights": self.gpt_weights,
            "sovits_weights": self.sovits_weights,
            "set_weights_calls": self.stats.set_weights_calls,
            "aux_ref_audio_paths": self.stats.aux_ref_audio_paths,
        }
