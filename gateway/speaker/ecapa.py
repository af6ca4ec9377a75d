"""ECAPA-TDNN speaker encoder (SpeechBrain's architecture, 192-d) from a directory the operator provides.

SpeechBrain itself pulls torchaudio, which wants another torch than the one the `quality` extra pins, so the
network is written here in plain torch, module for module and parameter name for parameter name, after
SpeechBrain's `ECAPA_TDNN`: a TDNN block, SE-Res2Net blocks, multi-layer feature aggregation, attentive
statistics pooling with global context, and a 1x1 convolution to the embedding. Its input is SpeechBrain's
`Fbank(n_mels=80)` (25 ms Hamming windows every 10 ms, HTK-mel triangular filters, dB with an 80 dB floor)
with the per-utterance mean removed (`InputNormalization(norm_type="sentence", std_norm=False)`). Checked once
against SpeechBrain 1.1.2's own modules loaded with the same state dict: features within 2e-4 dB, embeddings at
cosine 0.9999999.

`GATEWAY_SPEAKER_MODEL_DIR` holds two files; nothing is downloaded at run time:

    hyperparams.json       the architecture, e.g. {"input_size": 80, "lin_neurons": 192,
                           "channels": [1024, 1024, 1024, 1024, 3072], "kernel_sizes": [5, 3, 3, 3, 1],
                           "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "res2net_scale": 8,
                           "se_channels": 128, "global_context": true}; omitted keys take SpeechBrain's defaults
    embedding_model.ckpt   the state dict (torch.save), as in speechbrain/spkrec-ecapa-voxceleb: that
                           checkpoint loads as is, with the hyperparams above
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gateway.speaker import ENCODER_RATE

HYPERPARAMS_FILE = "hyperparams.json"
WEIGHTS_FILE = "embedding_model.ckpt"
#: SpeechBrain's ECAPA_TDNN defaults; hyperparams.json overrides any of them.
DEFAULTS: dict[str, Any] = {
    "input_size": 80,
    "lin_neurons": 192,
    "channels": [512, 512, 512, 512, 1536],
    "kernel_sizes": [5, 3, 3, 3, 1],
    "dilations": [1, 2, 3, 4, 1],
    "attention_channels": 128,
    "res2net_scale": 8,
    "se_channels": 128,
    "global_context": True,
}
N_FFT = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
TOP_DB = 80.0


class EncoderDirError(Exception):
    """The model directory is missing a file or holds something that does not load (said at startup)."""


def read_hyperparams(model_dir: Path) -> dict[str, Any]:
    path = model_dir / HYPERPARAMS_FILE
    try:
        given = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EncoderDirError(f"cannot read {path}: {exc}") from exc
    if not isinstance(given, dict) or set(given) - set(DEFAULTS):
        unknown = sorted(set(given) - set(DEFAULTS)) if isinstance(given, dict) else "not an object"
        raise EncoderDirError(f"{path}: unexpected hyperparameters {unknown}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **given}


def build_model(hparams: dict[str, Any]) -> Any:
    """An ECAPA_TDNN torch module with SpeechBrain's parameter names (untrained)."""
    import torch
    from torch import nn

    class Conv1d(nn.Module):
        """SpeechBrain's Conv1d: "same" length with reflect padding; the torch conv is its `.conv`."""

        def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
            super().__init__()
            self.pad = dilation * (kernel_size - 1) // 2
            self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

        def forward(self, x: Any) -> Any:
            if self.pad:
                x = nn.functional.pad(x, (self.pad, self.pad), mode="reflect")
            return self.conv(x)

    class BatchNorm1d(nn.Module):
        def __init__(self, size: int) -> None:
            super().__init__()
            self.norm = nn.BatchNorm1d(size)

        def forward(self, x: Any) -> Any:
            return self.norm(x)

    class TDNNBlock(nn.Module):
        def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
            super().__init__()
            self.conv = Conv1d(in_channels, out_channels, kernel_size, dilation)
            self.norm = BatchNorm1d(out_channels)

        def forward(self, x: Any) -> Any:
            return self.norm(torch.relu(self.conv(x)))

    class Res2NetBlock(nn.Module):
        def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int) -> None:
            super().__init__()
            self.scale = scale
            width = channels // scale
            self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

        def forward(self, x: Any) -> Any:
            outputs: list[Any] = []
            for index, chunk in enumerate(torch.chunk(x, self.scale, dim=1)):
                # the first chunk passes as is; each next one also sees the previous block's output
                fed = chunk if index <= 1 else chunk + outputs[-1]
                outputs.append(chunk if index == 0 else self.blocks[index - 1](fed))
            return torch.cat(outputs, dim=1)

    class SEBlock(nn.Module):
        def __init__(self, channels: int, se_channels: int) -> None:
            super().__init__()
            self.conv1 = Conv1d(channels, se_channels, 1)
            self.conv2 = Conv1d(se_channels, channels, 1)

        def forward(self, x: Any) -> Any:
            s = torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))
            return torch.sigmoid(self.conv2(s)) * x

    class SERes2NetBlock(nn.Module):
        def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
            super().__init__()
            self.tdnn1 = TDNNBlock(in_channels, out_channels, 1, 1)
            self.res2net_block = Res2NetBlock(out_channels, hparams["res2net_scale"], kernel_size, dilation)
            self.tdnn2 = TDNNBlock(out_channels, out_channels, 1, 1)
            self.se_block = SEBlock(out_channels, hparams["se_channels"])
            self.shortcut = Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

        def forward(self, x: Any) -> Any:
            residual = self.shortcut(x) if self.shortcut is not None else x
            return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + residual

    def statistics(x: Any, weights: Any) -> tuple[Any, Any]:
        mean = (weights * x).sum(dim=2)
        std = torch.sqrt((weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(1e-12))
        return mean, std

    class AttentiveStatisticsPooling(nn.Module):
        def __init__(self, channels: int, attention_channels: int, global_context: bool) -> None:
            super().__init__()
            self.global_context = global_context
            self.tdnn = TDNNBlock(channels * 3 if global_context else channels, attention_channels, 1, 1)
            self.conv = Conv1d(attention_channels, channels, 1)

        def forward(self, x: Any) -> Any:
            frames = x.shape[-1]
            attention = x
            if self.global_context:  # every frame sees the utterance's mean and std
                mean, std = statistics(x, torch.full_like(x[:, :1], 1.0 / frames))
                attention = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, frames),
                                       std.unsqueeze(2).expand(-1, -1, frames)], dim=1)
            weights = torch.softmax(self.conv(torch.tanh(self.tdnn(attention))), dim=2)
            mean, std = statistics(x, weights)
            return torch.cat((mean, std), dim=1).unsqueeze(2)

    class ECAPA_TDNN(nn.Module):  # noqa: N801 - SpeechBrain's name
        def __init__(self) -> None:
            super().__init__()
            channels, kernels, dilations = hparams["channels"], hparams["kernel_sizes"], hparams["dilations"]
            self.blocks = nn.ModuleList([TDNNBlock(hparams["input_size"], channels[0], kernels[0], dilations[0])])
            for i in range(1, len(channels) - 1):
                self.blocks.append(SERes2NetBlock(channels[i - 1], channels[i], kernels[i], dilations[i]))
            self.mfa = TDNNBlock(sum(channels[1:-1]), channels[-1], kernels[-1], dilations[-1])
            self.asp = AttentiveStatisticsPooling(channels[-1], hparams["attention_channels"],
                                                  hparams["global_context"])
            self.asp_bn = BatchNorm1d(channels[-1] * 2)
            self.fc = Conv1d(channels[-1] * 2, hparams["lin_neurons"], 1)

        def forward(self, features: Any) -> Any:
            """(batch, frames, input_size) → (batch, 1, lin_neurons), as SpeechBrain's."""
            x = features.transpose(1, 2)
            outputs = []
            for block in self.blocks:
                x = block(x)
                outputs.append(x)
            x = self.mfa(torch.cat(outputs[1:], dim=1))
            return self.fc(self.asp_bn(self.asp(x))).transpose(1, 2)

    return ECAPA_TDNN()


def htk_triangular_filters(bands: int) -> np.ndarray:
    """(n_fft/2+1, bands): SpeechBrain's Filterbank matrix (HTK mel scale, 0–8 kHz, symmetric triangles)."""
    mel = np.linspace(0.0, 2595 * math.log10(1 + 8000 / 700), bands + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band, central = (hz[1:] - hz[:-1])[:-1], hz[1:-1]
    freqs = np.linspace(0, ENCODER_RATE // 2, N_FFT // 2 + 1)
    slope = (freqs[None, :] - central[:, None]) / band[:, None]
    return np.maximum(0.0, np.minimum(slope + 1.0, 1.0 - slope)).T.astype(np.float32)


class ECAPAEncoder:
    """ECAPA-TDNN on the CPU, weights and architecture from `model_dir` (see the module docstring)."""

    name = "ecapa"

    def __init__(self, model_dir: Path) -> None:
        import torch

        hparams = read_hyperparams(model_dir)
        self._torch = torch
        self._net = build_model(hparams)
        weights = model_dir / WEIGHTS_FILE
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self._net.load_state_dict(state)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:  # missing, corrupt, or another shape
            raise EncoderDirError(f"cannot load {weights} with {model_dir / HYPERPARAMS_FILE}: {exc}") from exc
        self._net.eval()
        self.dim = int(hparams["lin_neurons"])
        self._window = torch.hamming_window(N_FFT)
        self._filters = torch.from_numpy(htk_triangular_filters(int(hparams["input_size"])))

    def features(self, samples: np.ndarray) -> Any:
        """(1, frames, bands) log-mel filterbank with the utterance mean removed."""
        torch = self._torch
        spec = torch.stft(torch.from_numpy(samples), N_FFT, HOP, window=self._window, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.abs().square().T  # (frames, n_fft/2+1)
        db = 10.0 * torch.log10(torch.clamp(power @ self._filters, min=1e-10))
        db = torch.maximum(db, db.max() - TOP_DB)
        return (db - db.mean(dim=0, keepdim=True)).unsqueeze(0)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._net(self.features(np.ascontiguousarray(samples, dtype=np.float32)))
        vector: np.ndarray = out.reshape(-1).numpy().astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector
