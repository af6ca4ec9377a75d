"""Reference intake orchestration: decode/validate/store off the event loop, count outcomes."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import anyio

from gateway.audio.intake import PreparedReference, prepare_reference, store_reference
from gateway.errors import GatewayError, InvalidInput, PayloadTooLarge
from gateway.metrics import Metrics
from gateway.settings import Settings


def decode_base64_reference(value: str, max_bytes: int) -> bytes:
    """Decode `reference_audio_base64` (plain or a data: URL) without exceeding the upload cap."""
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"reference audio is larger than the {max_bytes} byte limit", limit_bytes=max_bytes)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("reference_audio_base64 is not valid base64", code="invalid_base64") from exc


async def intake_reference(
    data: bytes, settings: Settings, metrics: Metrics, *, trim_to_max: bool = False
) -> tuple[PreparedReference, Path]:
    """Check and normalise a reference, then store it content-addressed in the shared dir."""

    def work() -> tuple[PreparedReference, Path, bool]:
        ref = prepare_reference(
            data,
            min_seconds=settings.min_reference_seconds,
            max_seconds=settings.max_reference_seconds,
            trim_to_max=trim_to_max,
        )
        existed = (settings.refs_dir / f"{ref.sha256}.wav").exists()
        return ref, store_reference(ref, settings.refs_dir), existed

    try:
        ref, path, existed = await anyio.to_thread.run_sync(work)
    except GatewayError as err:
        metrics.references.labels(outcome=err.code).inc()
        raise
    metrics.references.labels(outcome="reused" if existed else "stored").inc()
    return ref, path
