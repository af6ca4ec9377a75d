"""Voices' speaker embeddings, one small JSON file per voice and encoder beside the voice records.

    voices/embeddings/<voice id>.<model>.json   {"model": "ge2e", "dim": 256, "embedding": [...]}

Kept apart from `voice_<id>.json` so the voice record (what `GET /v1/voices` returns) stays small, and so a
late write here (a backfill racing a delete) can never bring a deleted voice back. One file per encoder:
switching GATEWAY_SPEAKER_ENCODER keeps the other model's embeddings for when it is switched back.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from gateway.voices.files import sweep_stale_temps, write_atomic
from gateway.voices.store import is_voice_id

log = logging.getLogger("gateway.voices")


class VoiceEmbeddings:
    def __init__(self, voices_dir: Path) -> None:
        self.root = Path(voices_dir) / "embeddings"

    def _path(self, voice_id: str, model: str) -> Path:
        if not is_voice_id(voice_id) or not model.isidentifier():  # no client string reaches a path
            raise ValueError(f"not a voice id and model: {voice_id!r}, {model!r}")
        return self.root / f"{voice_id}.{model}.json"

    def load(self, voice_id: str, model: str, dim: int) -> np.ndarray | None:
        """The stored embedding, or None when absent, unreadable or of another size (then it is recomputed)."""
        path = self._path(voice_id, model)
        try:
            record = json.loads(path.read_bytes())
            vector = np.asarray(record["embedding"], dtype=np.float32)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable embedding %s: %s", path.name, exc)
            return None
        return vector if vector.shape == (dim,) and np.isfinite(vector).all() else None

    def save(self, voice_id: str, model: str, vector: np.ndarray) -> None:
        path = self._path(voice_id, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": model, "dim": int(vector.shape[0]), "embedding": [float(x) for x in vector]}
        write_atomic(path, json.dumps(record).encode())

    def forget(self, voice_id: str) -> None:
        """Remove every model's embedding of a deleted voice."""
        if not is_voice_id(voice_id):
            return
        for path in self.root.glob(f"{voice_id}.*.json"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def sweep_stale_temps(self) -> list[Path]:
        return sweep_stale_temps(self.root) if self.root.is_dir() else []
