"""GE2E speaker encoder (Resemblyzer's pretrained 3-layer LSTM, 256-d), the default encoder.

The weights are the `pretrained.pt` that the `resemblyzer` package ships; nothing is downloaded. Importing
`resemblyzer` itself would import librosa (and with it numba, llvmlite, scikit-learn and scipy: ~400 MB for
one mel filterbank), so this module finds the package's directory without importing it, loads the state dict,
and computes Resemblyzer's front end itself: volume normalised to -30 dBFS (raise only), long silences trimmed
with webrtcvad, a 40-band Slaney mel power spectrogram (25 ms Hann windows, 10 ms hop), 1.6 s partials at 1.3
per second, the embedding the L2-normalised mean of the partials' embeddings (tests/test_speaker_embedding.py
holds it to Resemblyzer's own embedding of a clip: cosine > 0.9999). torch is imported here only, so
`import gateway` works without the `quality` extra.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from gateway.speaker import ENCODER_RATE

MEL_BANDS = 40
WINDOW = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s
PARTIALS_PER_SECOND = 1.3
MIN_COVERAGE = 0.75  # a last partial that covers less of its window than this is dropped (unless it is the only one)
VOLUME_TARGET_DBFS = -30.0
VAD_WINDOW = 480  # 30 ms: webrtcvad takes 10, 20 or 30 ms frames
VAD_SMOOTHING = 8  # frames in the moving average of the speech flags
VAD_MAX_SILENCE = 6  # frames of silence kept on each side of speech


def weights_path() -> Path | None:
    """Resemblyzer's `pretrained.pt`, found without importing the package (and librosa); None if not installed."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    return path if path.is_file() else None


def slaney_mel_filters(rate: int, n_fft: int, bands: int) -> np.ndarray:
    """librosa.filters.mel(htk=False, norm="slaney"): the filterbank Resemblyzer was trained with."""

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        linear = hz / (200.0 / 3)
        log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(hz >= 1000.0, log_part, linear)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))

    fft_freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    mel_freqs = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(rate / 2)), bands + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    return weights.astype(np.float32)


def normalize_volume(samples: np.ndarray) -> np.ndarray:
    """Raise (never lower) the level to -30 dBFS RMS, as Resemblyzer's preprocessing does."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms <= 0.0:
        return samples
    change_db = VOLUME_TARGET_DBFS - 20.0 * np.log10(rms)
    return samples if change_db < 0 else (samples * 10.0 ** (change_db / 20.0)).astype(np.float32)


def trim_long_silences(samples: np.ndarray) -> np.ndarray:
    """Drop silences longer than ~0.2 s (webrtcvad, aggressiveness 3); audio without detected speech is kept
    whole, since an embedding of something beats a refusal of audio a client already chose."""
    import webrtcvad  # the `quality` extra (webrtcvad-wheels)

    usable = len(samples) - len(samples) % VAD_WINDOW
    if usable == 0:
        return samples
    pcm = (np.clip(samples[:usable], -1.0, 1.0) * 32767).round().astype("<i2").tobytes()
    vad = webrtcvad.Vad(3)
    flags = np.array([vad.is_speech(pcm[i * 2 : (i + VAD_WINDOW) * 2], ENCODER_RATE)
                      for i in range(0, usable, VAD_WINDOW)], dtype=np.float64)
    padded = np.concatenate([np.zeros((VAD_SMOOTHING - 1) // 2), flags, np.zeros(VAD_SMOOTHING // 2)])
    smoothed = np.convolve(padded, np.ones(VAD_SMOOTHING) / VAD_SMOOTHING, mode="valid")
    speech = np.round(smoothed).astype(bool)
    # binary dilation by VAD_MAX_SILENCE + 1 frames (scipy.ndimage's, centred), without scipy
    width = VAD_MAX_SILENCE + 1
    dilated = np.convolve(speech.astype(np.int32), np.ones(width, dtype=np.int32), mode="full")
    start = (width - 1) - (width - 1) // 2
    keep = dilated[start : start + len(speech)] > 0
    if not keep.any():
        return samples
    return samples[:usable][np.repeat(keep, VAD_WINDOW)]


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame windows of 1.6 s, 1.3 per second, covering the utterance (Resemblyzer's slicing)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = max(1, int(np.round((ENCODER_RATE / PARTIALS_PER_SECOND) / HOP)))
    starts = range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)
    slices = [slice(start, start + PARTIAL_FRAMES) for start in starts]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(slices) > 1:
        slices.pop()
    return slices


class GE2EEncoder:
    """Resemblyzer's VoiceEncoder network with its shipped weights, on the CPU."""

    name = "ge2e"
    dim = 256

    def __init__(self, weights: Path) -> None:
        import torch

        class Network(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = torch.nn.LSTM(MEL_BANDS, 256, 3, batch_first=True)
                self.linear = torch.nn.Linear(256, 256)

            def forward(self, mels: Any) -> Any:
                _, (hidden, _) = self.lstm(mels)
                raw = torch.relu(self.linear(hidden[-1]))
                return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)

        self._torch = torch
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in checkpoint["model_state"].items() if not k.startswith("similarity_")}
        self._net = Network()
        self._net.load_state_dict(state)
        self._net.eval()
        self._window = torch.hann_window(WINDOW, periodic=True)
        self._mel = torch.from_numpy(slaney_mel_filters(ENCODER_RATE, WINDOW, MEL_BANDS))

    def mel_frames(self, samples: np.ndarray) -> Any:
        """(frames, 40) mel power spectrogram, frames centred every 10 ms (librosa's melspectrogram)."""
        torch = self._torch
        spec = torch.stft(torch.from_numpy(samples), WINDOW, HOP, window=self._window, center=True,
                          pad_mode="reflect", return_complex=True)
        return (self._mel @ spec.abs().square()).T.contiguous()

    def embed(self, samples: np.ndarray) -> np.ndarray:
        torch = self._torch
        wav = trim_long_silences(normalize_volume(np.ascontiguousarray(samples, dtype=np.float32)))
        slices = partial_slices(len(wav))
        needed = slices[-1].stop * HOP
        if needed >= len(wav):
            wav = np.pad(wav, (0, needed - len(wav)))
        mel = self.mel_frames(wav)
        with torch.inference_mode():
            partials = self._net(torch.stack([mel[s] for s in slices])).numpy()
        mean: np.ndarray = partials.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm if norm else mean).astype(np.float32)
