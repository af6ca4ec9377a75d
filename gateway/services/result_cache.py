"""Finished renders, content-addressed on the shared dir: `results/<key>.wav` + `results/<key>.json`.

With a fixed seed a render is a pure function of its inputs, so the key (`result_key`) is the sha256 of a
canonical JSON of them and a hit needs no engine. Bounded by total bytes (`GATEWAY_RESULT_CACHE_BYTES`),
least recently used first: recency is the WAV's mtime, touched on every hit, so a restarted gateway rebuilds
the same order from the directory. Both files are written atomically, WAV first; the JSON appearing is what
makes an entry visible, so a reader never sees half an entry. Another replica's entries are found on the
disk (a miss in our index still looks there) but each replica evicts only what its own index knows.
Methods do file I/O: call them through `anyio.to_thread` (the lock makes them safe from worker threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.audio.wav import parse_wav
from gateway.voices.files import STALE_TEMP_SECONDS, sweep_stale_temps, write_atomic

log = logging.getLogger("gateway.results")

#: bump when what a render produces for the same inputs changes (stretch algorithm, metadata shape)
CACHE_FORMAT = 1


def result_key(inputs: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a render's inputs (sorted keys, no whitespace)."""
    canonical = json.dumps({"format": CACHE_FORMAT, **inputs}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResult:
    wav: bytes
    sample_rate: int
    frames: int
    meta: dict[str, Any]


class ResultCache:
    """A size-bounded LRU of rendered WAVs in one directory; `max_bytes` 0 disables it."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # key → bytes of both files, oldest first
        self._total = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def total_bytes(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._sizes)

    def load(self) -> None:
        """Create the directory, sweep dead writers' temp files and index what is there (oldest first);
        then evict down to the bound, which may have shrunk since the last run."""
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.directory)
        found: list[tuple[float, str, int]] = []
        cutoff = time.time() - STALE_TEMP_SECONDS
        with os.scandir(self.directory) as listing:
            entries = {entry.name: entry for entry in listing if not entry.name.startswith(".")}
        for name, entry in entries.items():
            key, _, suffix = name.rpartition(".")
            try:
                if suffix == "json" and f"{key}.wav" in entries:
                    wav = entries[f"{key}.wav"].stat()
                    found.append((wav.st_mtime, key, wav.st_size + entry.stat().st_size))
                elif suffix == "wav" and f"{key}.json" not in entries and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)  # its writer died before the JSON: never visible, never complete
            except OSError:
                continue  # removed meanwhile (another replica evicting)
        with self._lock:
            for _, key, size in sorted(found):
                self._remember(key, size)
        self._evict()

    def get(self, key: str) -> CachedResult | None:
        """The entry, marked as just used; None when absent or unreadable (then forgotten; a damaged entry's
        files are deleted: writes are atomic, so damage is real, not a write in progress)."""
        if not self.enabled:
            return None
        wav_path, meta_path = self._paths(key)
        try:
            meta_bytes = meta_path.read_bytes()
            wav = wav_path.read_bytes()
            meta = json.loads(meta_bytes)
            info = parse_wav(wav)
            os.utime(wav_path)  # recency, for this replica after a restart and for the others
        except FileNotFoundError:  # never stored, or evicted meanwhile (here or by another replica)
            self._forget(key)
            return None
        except (OSError, ValueError) as exc:
            log.warning("unreadable cached result %s, deleted: %s", key, exc)
            self._forget(key)
            self._delete(key)
            return None
        with self._lock:
            self._remember(key, len(wav) + len(meta_bytes))
        self._evict()
        return CachedResult(wav=wav, sample_rate=info.sample_rate, frames=info.frames, meta=meta)

    def put(self, key: str, wav: bytes, meta: dict[str, Any]) -> bool:
        """Store an entry (replacing one under the same key); False when it alone exceeds the bound or the
        disk refuses (full, read-only): a cache that cannot store must not fail the render it would keep."""
        meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8")
        size = len(wav) + len(meta_bytes)
        if not self.enabled or size > self.max_bytes:
            return False
        wav_path, meta_path = self._paths(key)
        try:
            write_atomic(wav_path, wav)
            write_atomic(meta_path, meta_bytes)  # last: the entry is complete once this exists
        except OSError as exc:
            log.warning("cannot store result %s: %s", key, exc)
            return False
        with self._lock:
            self._remember(key, size)
        self._evict()
        return True

    def _paths(self, key: str) -> tuple[Path, Path]:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a result key: {key!r}")
        return self.directory / f"{key}.wav", self.directory / f"{key}.json"

    def _remember(self, key: str, size: int) -> None:
        """Index `key` as the most recent entry (caller holds the lock)."""
        self._total += size - self._sizes.pop(key, 0)
        self._sizes[key] = size

    def _forget(self, key: str) -> None:
        with self._lock:
            self._total -= self._sizes.pop(key, 0)

    def _evict(self) -> None:
        """Delete the least recently used entries until the total fits."""
        while True:
            with self._lock:
                if self._total <= self.max_bytes or not self._sizes:
                    return
                key, size = self._sizes.popitem(last=False)
                self._total -= size
            self._delete(key)

    def _delete(self, key: str) -> None:
        """JSON first, so the entry stops being visible before its audio goes."""
        for path in reversed(self._paths(key)):
            with contextlib.suppress(OSError):  # gone already (another replica evicted it): fine
                path.unlink()
