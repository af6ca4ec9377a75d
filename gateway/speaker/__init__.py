"""Speaker encoders behind one small interface (the `quality` extra: torch CPU, resemblyzer, ECAPA-TDNN).

Without the extra, `load_encoder` returns None and everything that uses an encoder (voice embeddings,
`min_similarity`, /v1/speaker-embedding) says so clearly instead of failing.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np

from gateway.settings import Settings

#: Every encoder takes 16 kHz mono float32 samples in [-1, 1].
ENCODER_RATE = 16000


class SpeakerEncoder(Protocol):
    name: str  # "ge2e" or "ecapa": reported as `model`
    dim: int  # 256 (GE2E) or 192 (ECAPA-TDNN)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """An L2-normalised embedding of 16 kHz mono float32 audio (blocking: call from a worker thread)."""
        ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings, in [-1, 1]."""
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom else 0.0


def extra_installed() -> bool:
    """torch and webrtcvad importable (the `quality` extra), found without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "webrtcvad"))


def load_encoder(settings: Settings) -> SpeakerEncoder | None:
    """The configured encoder, or None when the `quality` extra (or, for ge2e, resemblyzer) is not installed.

    Blocking (imports torch, ~2 s the first time; loads weights): call it from a worker thread, once. A broken
    ECAPA directory raises `EncoderDirError`: the operator asked for that model, so it is not silently None.
    """
    if not extra_installed():
        return None
    import torch

    # one thread per embed: on a busy host torch's OpenMP workers spin-wait for each other, and two threads cost
    # 4-5x the CPU of one for the same embedding, slower even in wall time (bench/quality.py); parallelism
    # comes from running embeds side by side instead (gateway/services/speaker.py)
    torch.set_num_threads(1)
    if settings.speaker_encoder == "ecapa":
        from gateway.speaker.ecapa import ECAPAEncoder

        assert settings.speaker_model_dir is not None  # Settings refuses ecapa without it
        return ECAPAEncoder(settings.speaker_model_dir)
    from gateway.speaker.ge2e import GE2EEncoder, weights_path

    weights = weights_path()
    return GE2EEncoder(weights) if weights is not None else None
