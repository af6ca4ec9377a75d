"""Run the synthesizer off the event loop, one step per worker-thread call.

The synthesizer is CPU-bound and not thread-safe. Callers hold the engine lock, and each step runs in
an AnyIO worker thread, so the event loop keeps answering `/openapi.json` and `/_stats` meanwhile, and
no two threads ever use the synthesizer at once (steps of one request are strictly sequential).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from gateway.cpu_engine.framing import PLACEHOLDER_RATE, encode, placeholder_silence, streaming_pieces

T = TypeVar("T")
_DONE = object()


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(function, *args)


async def iterate_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Advance a blocking iterator in worker threads; a cancelled wait still lets the step finish."""
    while True:
        item = await anyio.to_thread.run_sync(next, iterator, _DONE)
        if item is _DONE:
            return
        yield item  # type: ignore[misc]


def synthesize_all(synthesizer: Any, params: Any) -> np.ndarray | None:
    """All segments joined (mode 0), or None when there was nothing to say (punctuation-only text)."""
    segments = list(synthesizer.segments(params))
    return np.concatenate(segments).astype(np.float32) if segments else None


def whole_audio(synthesizer: Any, params: Any) -> tuple[np.ndarray, int]:
    """api_v2 mode 0 audio: the speech, or the engine's 16 kHz second of zeros when nothing was said."""
    audio = synthesize_all(synthesizer, params)
    if audio is None:
        return placeholder_silence(), PLACEHOLDER_RATE
    return audio, int(params.output_rate)


def encoded_stream(
    synthesizer: Any, params: Any, *, mode: int, media_type: str, min_chunk_length: int
) -> Iterator[bytes]:
    """api_v2 streaming chunks after the WAV header: wav travels as raw PCM, others as whole streams."""
    chunk_media = "raw" if media_type == "wav" else media_type
    rate = int(params.output_rate)
    pieces = streaming_pieces(synthesizer.segments(params), mode, rate, min_chunk_length, params.speed_factor)
    for piece in pieces:
        yield encode(chunk_media, piece, rate)
