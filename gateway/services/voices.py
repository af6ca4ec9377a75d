"""Voice-library writes as the API runs them: off the event loop, storage faults reported as one 503."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anyio

from gateway.errors import StorageUnavailable
from gateway.services.context import Services

log = logging.getLogger("gateway.voices")

T = TypeVar("T")


async def write_library(services: Services, action: str, write: Callable[[], T]) -> T:
    """Run one library write (create, delete, default) in a thread.

    An OSError there (voices/ missing, read-only or replaced by a file, disk full, EFBIG) is a storage
    fault, not a bug: the client gets 503 `storage_unavailable` with Retry-After and no host path, the
    operator's log the path and the OS error. The store has already released any name it claimed.
    """
    try:
        return await anyio.to_thread.run_sync(write)
    except OSError as exc:
        log.error("cannot %s in %s: %s", action, services.settings.voices_dir, exc)
        raise StorageUnavailable(
            f"the gateway cannot {action} right now (its shared directory is not writable); try again later"
        ) from exc
