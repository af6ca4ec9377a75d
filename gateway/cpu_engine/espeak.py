"""Small ctypes binding to the espeak-ng shared library shipped by `espeakng-loader`.

Piper bundles its own statically linked espeak for phonemisation only; speaking Chinese, Japanese,
Korean and Cantonese needs espeak-ng's own synthesiser, which no maintained Python package exposes
as audio. The C API needed is tiny (initialise, pick a voice, set the rate, synthesise through a
callback), so a binding of ~100 lines beats a dependency. espeak-ng keeps all its state in process
globals and is not thread-safe, so every call goes through one module-level lock.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

# espeak_AUDIO_OUTPUT: SYNCHRONOUS makes espeak_Synth return only after every sample has been
# handed to the callback, so no background thread or event queue is involved.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit() inside the library
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1  # espeakRATE, words per minute
_PARAM_PITCH = 3  # espeakPITCH, base pitch 0-100
_EE_OK = 0

#: espeak-ng's default speaking rate and the range its synthesiser accepts (words per minute).
DEFAULT_RATE_WPM = 175
_MIN_RATE_WPM = 80
_MAX_RATE_WPM = 450
#: espeak-ng's default base pitch (0-100); the engine speaks with it, tests vary it to make references.
DEFAULT_PITCH = 50

# int callback(short *wav, int numsamples, espeak_EVENT *events); returning 0 continues synthesis.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    """The espeak-ng library could not be loaded, initialised, or refused a voice."""


class _Espeak:
    """The loaded library plus the buffer its callback fills; only used under `_LOCK`."""

    def __init__(self) -> None:
        import espeakng_loader  # imported here so the package is only needed for non-English text

        self._lib: Any = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetVoiceByName.restype = ctypes.c_int
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_SetParameter.restype = ctypes.c_int
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size in bytes
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0 = none)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier out-pointer (unused)
            ctypes.c_void_p,  # user data
        ]
        self._lib.espeak_Synth.restype = ctypes.c_int
        self._lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        self._lib.espeak_SetSynthCallback.restype = None

        data_path = espeakng_loader.get_data_path().encode()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}) with data at {data_path.decode()}")
        self.sample_rate: int = rate
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SynthCallback(self._collect)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _collect(self, wav: Any, num_samples: int, _events: Any) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise EspeakError(f"espeak-ng has no voice named {voice!r}")
            self._voice = voice
        clamped = int(min(max(rate_wpm, _MIN_RATE_WPM), _MAX_RATE_WPM))
        self._lib.espeak_SetParameter(_PARAM_RATE, clamped, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(min(max(pitch, 0), 100)), 0)
        encoded = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = self._lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with status {status}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        self._chunks = []
        return (samples.astype(np.float32) / 32768.0).astype(np.float32)


_LOCK = threading.Lock()
_instance: _Espeak | None = None


def _engine() -> _Espeak:
    """Load and initialise espeak-ng once per process (callers hold `_LOCK`)."""
    global _instance
    if _instance is None:
        _instance = _Espeak()
    return _instance


def sample_rate() -> int:
    """The rate espeak-ng produces (22050 Hz for the packaged build), initialising it if needed."""
    with _LOCK:
        return _engine().sample_rate


def synthesize(text: str, voice: str, rate_wpm: int = DEFAULT_RATE_WPM, pitch: int = DEFAULT_PITCH) -> np.ndarray:
    """Speak `text` with espeak-ng voice `voice` (e.g. `cmn`, `ja`, `ko`, `yue`, `en-us`, `en-us+f3`).

    Returns float32 mono samples in [-1, 1] at `sample_rate()`; empty if espeak produced nothing.
    The rate is clamped to the 80-450 words-per-minute range espeak-ng accepts, `pitch` to 0-100.
    """
    with _LOCK:
        return _engine().synthesize(text, voice, rate_wpm, pitch)
