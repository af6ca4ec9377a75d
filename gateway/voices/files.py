"""Small filesystem primitives the voice library is built on: atomic replace and exclusive claims.

They rely only on what POSIX filesystems and NFSv3+ guarantee: `os.replace` is atomic, and
`link` / `O_CREAT | O_EXCL` onto an existing name fails, so exactly one process wins a claim.
No locks, no database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from pathlib import Path

log = logging.getLogger("gateway.voices")

#: A temp file untouched this long belongs to a writer that died (SIGKILL, SIGXFSZ, power loss). A live
#: write (data already in memory: at most one capped reference plus fsync) ends within seconds even on slow NFS;
#: 10 minutes also absorbs clock skew between replicas (NFS stamps mtime with the server's clock). Were a
#: live temp ever swept, that one write fails cleanly (its request gets a 503): nothing is corrupted.
STALE_TEMP_SECONDS = 600.0
#: Our temp names: `.<target>.<random>.tmp` (write_atomic, try_claim, references). A claim moved aside by
#: release_claim (`.released`) keeps the claim's old mtime while in use, so age cannot tell it is dead: kept.
_TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one, never a part."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def read_text_or_none(path: Path) -> str | None:
    """The file's text, or None when it is missing or unreadable (callers treat both as absent)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def try_claim(path: Path, holder: str) -> bool:
    """Create `path` holding `holder` if nobody has yet; False when it already exists.

    The claim appears complete or not at all: the holder is written to a temp file which is then
    hard-linked into place (link fails if the target exists, so exactly one process wins). On
    filesystems without hard links it falls back to O_CREAT|O_EXCL, where a reader may briefly see
    the file empty; `claim_holder` reports that as "" and callers treat it as in progress.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    data = holder.encode("utf-8")
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError:
            return _try_claim_exclusive(path, data)
        return True
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def _try_claim_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return True


def claim_holder(path: Path) -> str | None:
    """Who holds the claim at `path`: its text ("" while being written), or None when unclaimed."""
    text = read_text_or_none(path)
    return None if text is None else text.strip()


def claim_age_seconds(path: Path) -> float | None:
    """Seconds since the claim was written, or None when it is gone."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return None


def release_claim(path: Path, expected_holder: str) -> bool:
    """Remove the claim at `path` only if it is still held by `expected_holder`.

    A plain read-then-unlink could delete a claim another process made in between, so the claim
    is first renamed aside (atomic: only one process can move it), then checked; if it turns out
    to belong to someone else it is put back.
    """
    aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}.released")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        holder = claim_holder(aside)
        if holder == expected_holder:
            return True
        if holder is not None and not try_claim(path, holder):
            log.warning("claim %s held by %r was replaced while being checked", path.name, holder)
        return False
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()


def sweep_stale_temps(directory: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete our hidden temp files in `directory` not modified for `older_than` seconds; the removed paths.

    Other hidden files (e.g. NFS's `.nfsXXXX`) and every visible file are left alone. Errors are logged,
    never raised: a sweep that cannot run must not keep the gateway from starting.
    """
    removed: list[Path] = []
    cutoff = time.time() - older_than
    try:
        with os.scandir(directory) as listing:
            entries = [entry for entry in listing if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX)]
    except OSError as exc:
        log.warning("cannot sweep temp files in %s: %s", directory, exc)
        return removed
    for entry in entries:
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if not entry.is_file(follow_symlinks=False) or mtime > cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # another replica swept it first
        except OSError as exc:
            log.warning("cannot remove stale temp file %s: %s", entry.path, exc)
            continue
        log.warning("removed stale temp file %s (%.0f s old; its writer died mid-write)", entry.path,
                    time.time() - mtime)
        removed.append(Path(entry.path))
    return removed
