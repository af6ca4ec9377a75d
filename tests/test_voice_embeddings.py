"""Voices keep their speaker embedding (issue 14 item 2): stored beside the voice records when the `quality` extra
is installed, backfilled for voices made before it, removed with the voice; creating a voice whose reference
sounds like an existing one (cosine ≥ GATEWAY_VOICE_DUPLICATE_SIMILARITY, 0.9) warns, naming that voice.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.voices.embeddings import VoiceEmbeddings
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import EngineProcess, make_reference, running_engine


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with running_engine(flavor="v2") as proc:
        yield proc


@pytest.fixture
def gateway(engine: EngineProcess, tmp_path: Path) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(tmp_path / "shared", [engine.url])) as gw:
        yield gw


def reference(tmp_path: Path, f0: float, seconds: float = 4.0, rate: int = 32000) -> bytes:
    return make_reference(tmp_path / f"ref-{f0}-{seconds}-{rate}.wav", seconds=seconds, rate=rate, f0=f0).read_bytes()


def create(url: str, audio: bytes, name: str) -> dict[str, object]:
    fields = {"name": name, "prompt_text": "Hello there.", "prompt_language": "en"}
    response = httpx.post(f"{url}/v1/voices", data=fields, files={"audio": ("ref.wav", audio)}, timeout=60)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def stored(gateway: GatewayServer, voice_id: str) -> np.ndarray | None:
    return VoiceEmbeddings(gateway.settings.voices_dir).load(voice_id, "ge2e", 256)


def test_voice_stores_its_embedding_and_forgets_it_on_delete(gateway: GatewayServer, tmp_path: Path) -> None:
    audio = reference(tmp_path, 120.0)
    voice = create(gateway.url, audio, "Low")
    assert voice["warnings"] == []
    vector = stored(gateway, str(voice["id"]))
    assert vector is not None and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    record = json.loads((gateway.settings.voices_dir / "embeddings" / f"{voice['id']}.ge2e.json").read_text())
    assert record["model"] == "ge2e" and record["dim"] == 256
    # the same embedding the route gives for the voice's own normalised reference
    reference_wav = httpx.get(f"{gateway.url}/v1/voices/{voice['id']}/audio").content
    direct = httpx.post(f"{gateway.url}/v1/speaker-embedding", files={"audio": ("r.wav", reference_wav)}, timeout=60)
    assert float(vector @ np.asarray(direct.json()["embedding"])) == pytest.approx(1.0, abs=1e-5)
    # the voice record itself (what GET /v1/voices returns) stays small
    assert "embedding" not in httpx.get(f"{gateway.url}/v1/voices/{voice['id']}").json()

    assert httpx.delete(f"{gateway.url}/v1/voices/{voice['id']}").status_code == 204
    assert stored(gateway, str(voice["id"])) is None
    assert list((gateway.settings.voices_dir / "embeddings").iterdir()) == []


def test_duplicate_voice_warning_names_the_existing_voice(gateway: GatewayServer, tmp_path: Path) -> None:
    first = create(gateway.url, reference(tmp_path, 120.0), "Narrator")
    other = create(gateway.url, reference(tmp_path, 220.0), "Higher")
    assert other["warnings"] == []  # another voice: no warning

    # the same speaker, another recording (longer, other rate): named, with its id and similarity
    again = create(gateway.url, reference(tmp_path, 121.0, seconds=6.0, rate=24000), "Narrator take 2")
    warnings = again["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1, warnings
    assert "'Narrator'" in warnings[0] and str(first["id"]) in warnings[0] and "Higher" not in warnings[0]
    similarity = float(warnings[0].split("similarity ")[1].split(" ")[0])
    assert 0.9 <= similarity <= 1.0

    # a voice made before the extra was installed has no stored embedding: computed from its reference, kept
    (gateway.settings.voices_dir / "embeddings" / f"{first['id']}.ge2e.json").unlink()
    third = create(gateway.url, reference(tmp_path, 120.0, seconds=5.0), "Narrator take 3")
    named = " ".join(str(w) for w in third["warnings"])  # type: ignore[attr-defined]
    assert "'Narrator'" in named and "'Narrator take 2'" in named
    assert stored(gateway, str(first["id"])) is not None


def test_duplicate_threshold_is_a_setting(engine: EngineProcess, tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "shared", [engine.url], voice_duplicate_similarity=0.2)
    with running_gateway(settings) as gw:
        create(gw.url, reference(tmp_path, 120.0), "Low")
        warned = create(gw.url, reference(tmp_path, 220.0), "Higher")["warnings"]
        assert isinstance(warned, list) and len(warned) == 1 and "'Low'" in warned[0] and "from 0.2" in warned[0]


def test_voices_work_without_the_extra(engine: EngineProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # how Python marks a module as not importable
    with running_gateway(fast_settings(tmp_path / "shared", [engine.url])) as gw:
        audio = reference(tmp_path, 120.0)
        first = create(gw.url, audio, "One")
        second = create(gw.url, audio, "Two")  # the same recording: nothing to compare with, so no warning
        assert first["warnings"] == [] and second["warnings"] == []
        assert not (gw.settings.voices_dir / "embeddings").exists()
        cloned = httpx.post(f"{gw.url}/v1/voice-clone", data={"text": "Still works.", "voice_id": first["id"]},
                            timeout=60)
        assert cloned.status_code == 200, cloned.text
