"""Jobs on the shared directory: one JSON file per job (replaced atomically) and segment audio stored
content-addressed, so a restarted gateway (or another host) finds exactly what was done.

    <shared>/jobs/<job id>.json
    <shared>/jobs/audio/<sha256>.wav

Blocking file work: callers run these methods in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from pydantic import ValidationError

from gateway.jobs.model import Job
from gateway.voices.files import sweep_stale_temps, write_atomic

log = logging.getLogger("gateway.jobs")


class JobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.audio_dir = root / "audio"

    def prepare(self) -> None:
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.root)
        sweep_stale_temps(self.audio_dir)

    def _path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.json"

    def write(self, job_id: str, data: bytes) -> None:
        """Replace the job's file with `data` (its JSON, serialised by the caller at the moment it saves)."""
        write_atomic(self._path(job_id), data)

    def load_all(self) -> list[Job]:
        """Every readable job; a file that does not parse is logged and left for an operator."""
        jobs = []
        for path in sorted(self.root.glob("*.json")):
            try:
                jobs.append(Job.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as exc:
                log.error("cannot read job file %s: %s", path, exc)
        return jobs

    def read(self, job_id: str) -> Job | None:
        """The job as its file says now (None: no such job, or a file that does not parse)."""
        try:
            return Job.model_validate_json(self._path(job_id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.error("cannot read job file %s: %s", self._path(job_id), exc)
            return None

    def scan(self) -> dict[str, int]:
        """Job id → its file's mtime (ns): what changed since a previous scan, without parsing anything."""
        found = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        found[entry.name.removesuffix(".json")] = entry.stat().st_mtime_ns
        return found

    def delete(self, job_id: str) -> None:
        self._path(job_id).unlink(missing_ok=True)

    def put_audio(self, digest: str, wav: bytes) -> None:
        """Store a segment's WAV under its sha256 (written once; an intact existing file is kept)."""
        path = self.audio_path(digest)
        try:
            if path.stat().st_size == len(wav):
                os.utime(path)  # fresh again: another replica's sweep keeps files just (re)written
                return
        except FileNotFoundError:
            pass
        write_atomic(path, wav)

    def audio_age(self, digest: str) -> float:
        """Seconds since the segment file was last written (inf when it is gone)."""
        try:
            return time.time() - self.audio_path(digest).stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def audio_path(self, digest: str) -> Path:
        return self.audio_dir / f"{digest}.wav"

    def read_audio(self, digest: str) -> bytes:
        return self.audio_path(digest).read_bytes()

    def has_audio(self, digest: str) -> bool:
        return self.audio_path(digest).is_file()

    def remove_audio(self, digest: str) -> None:
        self.audio_path(digest).unlink(missing_ok=True)
