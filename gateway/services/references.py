"""Reference intake orchestration: decode/validate/store off the event loop, remember, count outcomes."""

from __future__ import annotations

import binascii
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pybase64

from gateway.audio.intake import PreparedReference, prepare_reference, store_reference
from gateway.errors import GatewayError, InvalidInput, PayloadTooLarge, StorageUnavailable
from gateway.services.context import Services
from gateway.services.reference_cache import CacheKey, StoredReference

log = logging.getLogger("gateway.references")


def decode_base64_reference(value: str, max_bytes: int, *, field: str = "reference_audio_base64") -> bytes:
    """Decode `reference_audio_base64` (or another base64 audio `field`; plain or a data: URL) without
    exceeding the upload cap."""
    payload = value
    if value.startswith("data:"):
        _, comma, payload = value.partition(",")
        if not comma:
            raise InvalidInput(f"{field} is a data: URL without data", code="invalid_base64")
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"the audio in {field} is larger than the {max_bytes} byte limit", limit_bytes=max_bytes)
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{field} is not valid base64", code="invalid_base64") from exc


#: Longest recording decoded at all (a long one may be trimmed to the window on request); longer → 413.
MAX_DECODE_SECONDS = 60.0
#: Uploads up to this size are hashed on the event loop: sha256 runs at ~2 GB/s here (a 5 s 32 kHz WAV,
#: 320 KB, takes ~0.15 ms), less than a worker-thread round trip; bigger ones go to a thread (DESIGN §8).
INLINE_HASH_BYTES = 1 << 20
#: `reference_audio_base64` up to this length is decoded on the loop (SIMD base64: 4 MiB in ~0.25 ms).
INLINE_BASE64_CHARS = 4 << 20


async def intake_reference(
    services: Services, data: bytes, *, trim_to_max: bool = False
) -> tuple[PreparedReference, Path]:
    """Check and normalise a reference, then store it content-addressed in the shared dir."""
    settings, metrics = services.settings, services.metrics

    def work() -> tuple[PreparedReference, Path, bool]:
        ref = prepare_reference(
            data,
            min_seconds=settings.min_reference_seconds,
            max_seconds=settings.max_reference_seconds,
            trim_to_max=trim_to_max,
            max_decode_seconds=MAX_DECODE_SECONDS,
        )
        try:
            existed = (settings.refs_dir / f"{ref.sha256}.wav").exists()  # EACCES raises here too
            path = store_reference(ref, settings.refs_dir)
        except OSError as exc:
            # the operator gets the path and the OS error; the client a 503 without host paths
            log.error("cannot store reference %s in %s: %s", ref.sha256, settings.refs_dir, exc)
            raise StorageUnavailable(
                "the gateway cannot store the reference recording right now (its shared directory is not "
                "writable); try again later"
            ) from exc
        return ref, path, existed

    try:
        ref, path, existed = await anyio.to_thread.run_sync(work, limiter=services.intake_limiter)
    except GatewayError as err:
        metrics.references.labels(outcome=err.code).inc()
        raise
    metrics.references.labels(outcome="reused" if existed else "stored").inc()
    return ref, path


def _still_there(entry: StoredReference) -> bool:
    """One stat, on the loop: cheaper than a thread hop on a local disk (and on NFS with attribute caching).
    The size check is `store_reference`'s own: a file cut short (a crash on another host) is written again."""
    try:
        return os.stat(entry.path).st_size == entry.size
    except OSError:
        return False


async def take_in_reference(services: Services, data: bytes, *, trim_to_max: bool = False) -> StoredReference:
    """`intake_reference` for request paths: an upload seen before (same bytes, same options) whose stored
    file still exists skips decode, trim, re-encode and hashing, and returns the first answer again."""
    settings = services.settings
    if len(data) <= INLINE_HASH_BYTES:
        digest = hashlib.sha256(data).hexdigest()
    else:
        digest = await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
    key: CacheKey = (digest, trim_to_max, settings.min_reference_seconds, settings.max_reference_seconds,
                     MAX_DECODE_SECONDS)
    cache = services.reference_cache
    entry = cache.get(key)
    if entry is not None:
        if _still_there(entry):
            services.metrics.references.labels(outcome="cached").inc()
            return entry
        cache.forget(key)  # deleted or swept since: do the work again, which re-creates the file
    ref, path = await intake_reference(services, data, trim_to_max=trim_to_max)
    entry = StoredReference.of(ref, path)
    cache.put(key, entry)
    return entry


@contextmanager
def naming_aux(index: int) -> Iterator[None]:
    """An intake error about an extra reference says which one (the main reference's errors stay as they are)."""
    try:
        yield
    except GatewayError as err:
        err.message = f"aux_audio {index + 1}: {err.message}"
        err.args = (err.message,)
        err.extra.setdefault("field", "aux_audio")
        raise


async def take_in_aux_references(
    services: Services, uploads: list[bytes], *, trim_to_max: bool = False
) -> list[StoredReference]:
    """Extra references of one request, each through the same intake (and cache) as the main one."""
    limit = services.settings.max_aux_references
    if len(uploads) > limit:
        raise InvalidInput(f"at most {limit} extra references (aux_audio) are allowed, got {len(uploads)}",
                           code="too_many_files", field="aux_audio")
    stored = []
    for index, data in enumerate(uploads):
        with naming_aux(index):
            stored.append(await take_in_reference(services, data, trim_to_max=trim_to_max))
    return stored
