"""Speaker embeddings over HTTP (issue 14 items 1-2): `POST /v1/speaker-embedding` in its three body shapes, seed
001's `POST /inference/`, GE2E (Resemblyzer's shipped weights) and ECAPA-TDNN (weights saved from a randomly
initialised model), the errors, the keys, and a gateway without the `quality` extra.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from gateway.settings import Settings
from gateway.speaker import load_encoder
from gateway.voices.embeddings import VoiceEmbeddings
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import REPO_ROOT, EngineProcess, assert_error, running_engine, speech_like_signal


def wav_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt, subtype="PCM_16" if fmt == "WAV" else None)
    return out.getvalue()


def voice(f0: float, seconds: float = 4.0, rate: int = 32000) -> np.ndarray:
    return speech_like_signal(seconds, rate, f0, silent_gaps=True)


def embed_file(url: str, audio: bytes, **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/speaker-embedding", files={"audio": ("clip.wav", audio)}, timeout=60, **kw)


def embed_json(url: str, body: dict[str, Any], path: str = "/v1/speaker-embedding",
               headers: dict[str, str] | None = None) -> httpx.Response:
    """JSON as Python's json (and seed 001's clients) writes it: NaN and Infinity included, which httpx refuses."""
    return httpx.post(f"{url}{path}", content=json.dumps(body).encode(), timeout=60,
                      headers={"content-type": "application/json", **(headers or {})})


def vector(response: httpx.Response, key: str = "embedding") -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()[key], dtype=np.float64)


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with running_engine("--instant") as proc:
        yield proc


@pytest.fixture(scope="module")
def gateway(engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(tmp_path_factory.mktemp("shared"), [engine.url])) as gw:
        yield gw


def golden_clip() -> np.ndarray:
    """3.5 s of quiet speech-like sound, 1 s of silence, the same again, at 16 kHz: exercises Resemblyzer's
    volume normalisation and its silence trimming as well as the network."""
    rate = 16000
    t = np.arange(int(3.5 * rate)) / rate
    phase = 2 * np.pi * np.cumsum(110.0 * (1 + 0.03 * np.sin(2 * np.pi * 3 * t))) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 40) if k * 110 < 6000)
    speech = (voiced * np.clip(np.sin(np.pi * 3 * t), 0, None) ** 0.5).astype(np.float32)
    speech = 0.05 * speech / np.abs(speech).max()
    return np.concatenate([speech, np.zeros(rate, np.float32), speech]).astype(np.float32)


def test_ge2e_matches_resemblyzer(tmp_path: Path) -> None:
    """The front end is ours (Resemblyzer's would import librosa): it must give Resemblyzer's own embedding."""
    golden = json.loads((Path(__file__).parent / "resemblyzer_golden.json").read_text())["embedding"]
    encoder = load_encoder(fast_settings(tmp_path, ["http://127.0.0.1:9"]))
    assert encoder is not None and encoder.name == "ge2e"
    assert float(np.dot(encoder.embed(golden_clip()), golden)) > 0.9999


def test_ge2e_embedding_of_an_upload(gateway: GatewayServer) -> None:
    response = embed_file(gateway.url, wav_bytes(voice(120.0, seconds=4.0), 32000))
    body = response.json()
    assert response.status_code == 200, response.text
    assert set(body) == {"embedding", "dim", "model", "duration"}
    assert body["model"] == "ge2e" and body["dim"] == 256 and len(body["embedding"]) == 256
    assert body["duration"] == pytest.approx(4.0, abs=0.001)
    assert np.linalg.norm(body["embedding"]) == pytest.approx(1.0, abs=1e-4)
    assert min(body["embedding"]) >= 0.0  # GE2E's ReLU: a real Resemblyzer embedding, not noise


def test_three_body_shapes_agree_and_different_voices_differ(gateway: GatewayServer) -> None:
    low = voice(120.0, rate=32000)
    upload = vector(embed_file(gateway.url, wav_bytes(low, 32000)))
    as_flac = vector(embed_file(gateway.url, wav_bytes(low, 32000, "FLAC")))
    as_base64 = vector(embed_json(gateway.url, {"audio_base64": base64.b64encode(wav_bytes(low, 32000)).decode()}))
    as_samples = vector(embed_json(gateway.url, {"wav": low.tolist(), "sr": 32000}))  # float32, resampled to 16k
    again = vector(embed_file(gateway.url, wav_bytes(low, 32000)))
    assert float(upload @ again) == pytest.approx(1.0, abs=1e-5)  # deterministic
    assert float(upload @ as_flac) > 0.999 and float(upload @ as_base64) == pytest.approx(1.0, abs=1e-5)
    assert float(upload @ as_samples) > 0.995  # float samples vs their PCM16 copy

    same_speaker_again = vector(embed_file(gateway.url, wav_bytes(voice(121.0, seconds=5.0, rate=16000), 16000)))
    higher = vector(embed_file(gateway.url, wav_bytes(voice(220.0), 32000)))
    noise = np.random.default_rng(7).uniform(-0.3, 0.3, 64000).astype(np.float32)
    hiss = vector(embed_json(gateway.url, {"wav": noise.tolist(), "sr": 16000}))
    assert float(upload @ same_speaker_again) > 0.95
    assert float(upload @ higher) < 0.85  # another voice: clearly lower
    assert float(upload @ hiss) < 0.6


def test_seed_001_encoder_route(gateway: GatewayServer) -> None:
    low = voice(120.0, rate=22050)  # what librosa.load gives by default
    body = {"wav": low.tolist(), "sr": 22050}
    answer = embed_json(gateway.url, body, path="/inference/")
    assert answer.status_code == 200 and set(answer.json()) == {"embed"}, answer.text
    embed = vector(answer, "embed")
    assert embed.shape == (256,)
    assert float(embed @ vector(embed_json(gateway.url, body))) == pytest.approx(1.0, abs=1e-5)
    no_slash = embed_json(gateway.url, body, path="/inference")  # a POST client gets the answer, not a redirect
    assert float(embed @ vector(no_slash, "embed")) == pytest.approx(1.0, abs=1e-5)
    assert_error(embed_json(gateway.url, {"wav": low[:100].tolist()}, path="/inference/"), 422, "invalid_request",
                 contains="sr")


@pytest.mark.parametrize(
    ("body", "status", "code", "contains"),
    [
        ({"wav": [], "sr": 16000}, 422, "empty_audio", "wav is empty"),
        ({"wav": [0.1, float("nan")] * 1000, "sr": 16000}, 422, "invalid_samples", "NaN"),
        ({"wav": [0.1, float("inf")] * 1000, "sr": 16000}, 422, "invalid_samples", "infinite"),
        ({"wav": [1000.0, -2000.0] * 1000, "sr": 16000}, 422, "invalid_samples", "[-1, 1]"),
        ({"wav": [0.1] * 2000, "sr": 0}, 422, "invalid_sample_rate", "between 1000 and 192000"),
        ({"wav": [0.1] * 2000, "sr": 400_000}, 422, "invalid_sample_rate", "got 400000"),
        ({"wav": [0.1, -0.1] * 30_501, "sr": 1000}, 413, "audio_too_long", "at most 60 s"),
        ({"wav": [0.1, -0.1] * 400, "sr": 16000}, 422, "audio_too_short", "at least 0.1 s"),
        ({"wav": [0.0] * 16000, "sr": 16000}, 422, "audio_silent", "silent"),
        ({"wav": ["a", "b"], "sr": 16000}, 422, "invalid_request", "wav.0"),
        ({"sr": 16000}, 422, "missing_audio", "audio_base64"),
        ({}, 422, "missing_audio", "audio_base64"),
        ({"audio_base64": "AAAA", "wav": [0.1], "sr": 16000}, 422, "invalid_request", "not both"),
        ({"audio_base64": "not base64!"}, 422, "invalid_base64", "audio_base64 is not valid base64"),
        ({"audio_base64": base64.b64encode(b"just some text, not audio").decode()}, 415, "unsupported_audio", ""),
    ],
    ids=["empty", "nan", "inf", "int16-scale", "sr-0", "sr-huge", "too-long", "too-short", "silent", "strings",
         "no-wav", "nothing", "both", "bad-base64", "not-audio"],
)
def test_bad_json_bodies(gateway: GatewayServer, body: dict[str, Any], status: int, code: str, contains: str) -> None:
    assert_error(embed_json(gateway.url, body), status, code, contains=contains)


def test_bad_uploads(gateway: GatewayServer) -> None:
    url = gateway.url
    no_file = httpx.post(f"{url}/v1/speaker-embedding", data={"name": "x"}, timeout=30)
    assert_error(no_file, 422, "missing_audio", contains="'audio' file field")
    assert_error(embed_file(url, b""), 422, "empty_audio")
    assert_error(embed_file(url, b"RIFF\x00\x00garbage"), 415, "unsupported_audio")
    long_clip = wav_bytes(np.full(61 * 8000, 0.1, dtype=np.float32), 8000)
    assert_error(embed_file(url, long_clip), 413, "audio_too_long", contains="at most 60 s")
    wrong_field = httpx.post(f"{url}/v1/speaker-embedding", files={"file": ("a.wav", b"RIFF")}, timeout=30)
    assert_error(wrong_field, 422, "unexpected_file", contains="'audio'")
    broken_json = httpx.post(f"{url}/v1/speaker-embedding", content=b"{", timeout=30,
                             headers={"content-type": "application/json"})
    assert_error(broken_json, 400, "malformed_body")


def test_routes_need_a_key(engine: EngineProcess, tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "shared", [engine.url], api_keys="speaker-admin,speaker-synth:synthesize")
    body = {"wav": voice(130.0, seconds=2.0, rate=16000).tolist(), "sr": 16000}
    with running_gateway(settings) as gw:
        for path in ("/v1/speaker-embedding", "/inference/"):
            assert_error(embed_json(gw.url, body, path=path), 401, "unauthorized", contains="missing API key")
            allowed = embed_json(gw.url, body, path=path, headers={"Authorization": "Bearer speaker-synth"})
            assert allowed.status_code == 200, allowed.text


# --- ECAPA-TDNN from an operator's directory

ECAPA_HPARAMS = {"channels": [256, 256, 256, 256, 768], "lin_neurons": 192}  # SpeechBrain's layout, smaller


def save_random_ecapa(model_dir: Path) -> None:
    import torch

    from gateway.speaker.ecapa import build_model, read_hyperparams

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "hyperparams.json").write_text(json.dumps(ECAPA_HPARAMS))
    torch.manual_seed(0)
    model = build_model(read_hyperparams(model_dir))
    with torch.no_grad():  # random running statistics too, so the batch norms are not identities
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), model_dir / "embedding_model.ckpt")


def test_ecapa_from_a_model_directory(engine: EngineProcess, tmp_path: Path) -> None:
    model_dir = tmp_path / "ecapa"
    save_random_ecapa(model_dir)
    settings = fast_settings(tmp_path / "shared", [engine.url], speaker_encoder="ecapa", speaker_model_dir=model_dir)
    with running_gateway(settings) as gw:
        low = wav_bytes(voice(120.0), 32000)
        first = embed_file(gw.url, low)
        assert first.status_code == 200, first.text
        assert first.json()["model"] == "ecapa" and first.json()["dim"] == 192
        a = vector(first)
        assert a.shape == (192,) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-4)
        assert float(a @ vector(embed_file(gw.url, low))) == pytest.approx(1.0, abs=1e-5)
        other = vector(embed_file(gw.url, wav_bytes(voice(260.0), 32000)))
        assert float(a @ other) < 0.9999  # random weights: only "not the same input" is meaningful
        seed = embed_json(gw.url, {"wav": voice(120.0, rate=16000).tolist(), "sr": 16000}, path="/inference/")
        assert vector(seed, "embed").shape == (192,)
        # voices keep the ECAPA embedding under its own name, of the size the encoder reports
        created = httpx.post(f"{gw.url}/v1/voices", data={"name": "Ecapa voice"}, files={"audio": ("r.wav", low)},
                             timeout=60)
        assert created.status_code == 201, created.text
        stored = VoiceEmbeddings(settings.voices_dir).load(created.json()["id"], "ecapa", 192)
        assert stored is not None and np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("encoder_name", "dim"), [("ge2e", 256), ("ecapa", 192)])
def test_load_encoder_reports_what_it_embeds(tmp_path: Path, encoder_name: str, dim: int) -> None:
    model_dir = tmp_path / "ecapa"
    save_random_ecapa(model_dir)
    settings = fast_settings(tmp_path, ["http://127.0.0.1:9"], speaker_encoder=encoder_name,
                             speaker_model_dir=model_dir)
    encoder = load_encoder(settings)
    assert encoder is not None and encoder.name == encoder_name and encoder.dim == dim
    assert encoder.embed(voice(120.0, rate=16000)).shape == (dim,)


def test_ecapa_state_dict_uses_speechbrains_names() -> None:
    """A speechbrain/spkrec-ecapa-voxceleb `embedding_model.ckpt` must load as is: same parameter names."""
    from gateway.speaker.ecapa import DEFAULTS, build_model

    names = set(build_model({**DEFAULTS, "channels": [1024, 1024, 1024, 1024, 3072]}).state_dict())
    for name in ("blocks.0.conv.conv.weight", "blocks.0.norm.norm.running_var",
                 "blocks.1.tdnn1.conv.conv.weight", "blocks.1.res2net_block.blocks.6.conv.conv.bias",
                 "blocks.3.se_block.conv2.conv.weight", "mfa.conv.conv.weight", "asp.tdnn.conv.conv.weight",
                 "asp.conv.conv.weight", "asp_bn.norm.weight", "fc.conv.weight"):
        assert name in names, name
    shapes = dict(build_model({**DEFAULTS, "channels": [1024, 1024, 1024, 1024, 3072]}).state_dict())
    assert tuple(shapes["mfa.conv.conv.weight"].shape) == (3072, 3072, 1)
    assert tuple(shapes["fc.conv.weight"].shape) == (192, 6144, 1)


def test_a_broken_ecapa_directory(engine: EngineProcess, tmp_path: Path) -> None:
    model_dir = tmp_path / "ecapa"
    model_dir.mkdir()
    (model_dir / "hyperparams.json").write_text(json.dumps({"channels": [64, 64, 64, 64, 192]}))
    (model_dir / "embedding_model.ckpt").write_bytes(b"not a checkpoint")
    settings = fast_settings(tmp_path / "shared", [engine.url], speaker_encoder="ecapa", speaker_model_dir=model_dir)
    with running_gateway(settings) as gw:
        response = embed_file(gw.url, wav_bytes(voice(120.0), 32000))
        assert_error(response, 503, "speaker_encoder_failed", contains="ecapa speaker encoder failed to load")


def test_ecapa_needs_its_directory() -> None:
    with pytest.raises(ValueError, match="GATEWAY_SPEAKER_MODEL_DIR"):
        Settings(_env_file=None, speaker_encoder="ecapa")  # type: ignore[call-arg]
    assert Settings(_env_file=None, speaker_model_dir="").speaker_model_dir is None  # type: ignore[call-arg]


# --- without the `quality` extra


def test_without_the_extra(engine: EngineProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an install without torch sees: a 501 that says what is missing (None in sys.modules is how Python
    marks a module as not importable; the gateway loads its encoder on first use, inside this test)."""
    monkeypatch.setitem(sys.modules, "torch", None)
    with running_gateway(fast_settings(tmp_path / "shared", [engine.url])) as gw:
        response = embed_file(gw.url, wav_bytes(voice(120.0), 32000))
        assert_error(response, 501, "speaker_encoder_unavailable", contains="'quality' extra")
        seed = embed_json(gw.url, {"wav": [0.1] * 2000, "sr": 16000}, path="/inference/")
        assert_error(seed, 501, "speaker_encoder_unavailable")


def test_importing_the_gateway_does_not_import_torch() -> None:
    code = ("import sys, gateway.app, gateway.cli; from gateway.services.speaker import Speakers; "
            "assert 'torch' not in sys.modules and 'webrtcvad' not in sys.modules, 'imported at startup'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
