"""Decode any output format independently of the gateway's encoders: PyAV (ffmpeg's decoders) for the
compressed formats, which also reads a FLAC stream of unknown length (libsndfile cannot)."""

from __future__ import annotations

import io

import av
import numpy as np

from tests.support import decode_wav, pcm16

#: PyAV's demuxer names per response_format
CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac"}
#: Samples per codec frame: a streamed file and a whole clip may differ by one (the resampler's stream edge)
FRAME_SAMPLES = {"mp3": 1152, "aac": 1024, "opus": 960}


def decode_audio(data: bytes, fmt: str, pcm_rate: int = 32000) -> tuple[np.ndarray, int]:
    """(float32 mono samples, rate) of a body in `fmt`; Opus decodes at 48 kHz, as every Opus decoder does."""
    if fmt == "pcm":
        return pcm16(data), pcm_rate
    if fmt == "wav":
        return decode_wav(data)
    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.format.name == CONTAINERS[fmt], container.format.name
        frames = list(container.decode(audio=0))
    samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])
    if samples.dtype.kind == "i":  # FLAC decodes to integer PCM
        samples = samples.astype(np.float32) / np.float32(2 ** (8 * samples.dtype.itemsize - 1))
    return samples.astype(np.float32), frames[0].sample_rate
