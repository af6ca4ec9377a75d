"""Pitch-preserving time stretch: ffmpeg's `atempo` (WSOLA) through PyAV, already a dependency.

`atempo` keeps pitch and formants (it moves overlapping waveform-similar windows, it does not resample), and
ships in PyAV's wheels; Rubber Band is not in them. One instance takes tempo 0.5–100, so a slower tempo is
a chain of instances (never needed within the 0.5–2 factors durations are targeted with, but kept correct).
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np

#: atempo's own limits per instance
_MIN_TEMPO, _MAX_TEMPO = 0.5, 100.0
#: frames fed to the graph at a time: bounds the graph's buffering, not the result
_BLOCK = 1 << 16


def atempo_chain(tempo: float) -> list[float]:
    """Tempos of chained atempo instances whose product is `tempo`, each within atempo's 0.5–100."""
    if not tempo > 0 or not math.isfinite(tempo):
        raise ValueError(f"tempo must be a positive number, got {tempo}")
    chain: list[float] = []
    while tempo < _MIN_TEMPO:
        chain.append(_MIN_TEMPO)
        tempo /= _MIN_TEMPO
    while tempo > _MAX_TEMPO:
        chain.append(_MAX_TEMPO)
        tempo /= _MAX_TEMPO
    return [*chain, tempo]


def time_stretch(samples: np.ndarray, rate: int, factor: float) -> np.ndarray:
    """Float32 mono `samples` made `factor` times as long (factor = new / old duration), pitch unchanged.

    The length is factor × input to within a few milliseconds (atempo's window edges); a factor of 1
    returns the input untouched."""
    if not factor > 0 or not math.isfinite(factor):
        raise ValueError(f"stretch factor must be a positive number, got {factor}")
    mono = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if factor == 1.0 or mono.size == 0:
        return mono
    graph = av.filter.Graph()
    source = graph.add_abuffer(format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate))
    node = source
    for tempo in atempo_chain(1.0 / factor):
        stage = graph.add("atempo", f"{tempo:.9f}")
        node.link_to(stage)
        node = stage
    sink = graph.add("abuffersink")
    node.link_to(sink)
    graph.configure()

    out: list[np.ndarray] = []

    def drain() -> None:
        while True:
            try:
                frame = sink.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            assert isinstance(frame, av.AudioFrame)
            out.append(frame.to_ndarray().reshape(-1))

    for start in range(0, mono.size, _BLOCK):
        frame = av.AudioFrame.from_ndarray(mono[start : start + _BLOCK].reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        frame.time_base = Fraction(1, rate)
        frame.pts = start
        source.push(frame)
        drain()
    source.push(None)  # end of stream: atempo flushes its last window
    drain()
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, dtype=np.float32)


#: Edge trimming for clips placed on a timeline: 5 ms frames, anything 40 dB under the clip's loudest frame is
#: silence, and 5 ms of it stays before and after the speech (so the onset lands on the cue, not on a gap).
_EDGE_FRAME_SECONDS = 0.005
_EDGE_TOP_DB = 40.0
_EDGE_KEEP_SECONDS = 0.005


def trim_edge_silence(samples: np.ndarray, rate: int) -> np.ndarray:
    """The clip without its leading and trailing silence (engines pad speech with some): speech itself is never
    cut, only frames far below the loudest one at either edge. An all-silent clip is returned unchanged."""
    hop = max(1, round(_EDGE_FRAME_SECONDS * rate))
    frames = len(samples) // hop
    if frames == 0:
        return samples
    rms = np.sqrt(np.mean(np.square(samples[: frames * hop].reshape(frames, hop), dtype=np.float64), axis=1))
    if not rms.max() > 0:
        return samples
    loud = np.flatnonzero(rms >= rms.max() * 10.0 ** (-_EDGE_TOP_DB / 20.0))
    keep = round(_EDGE_KEEP_SECONDS * rate)
    start = max(0, int(loud[0]) * hop - keep)
    end = len(samples) if int(loud[-1]) == frames - 1 else min(len(samples), (int(loud[-1]) + 1) * hop + keep)
    return samples[start:end]
