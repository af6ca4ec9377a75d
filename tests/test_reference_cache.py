"""The prepared-reference cache: an upload seen before skips intake but answers exactly as the first time.

Against a real `cpu-engine --instant` and the real gateway on sockets; the intake outcome metric tells
a cache hit ("cached") from real work ("stored"/"reused").
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from gateway.services.reference_cache import ReferenceCache, StoredReference
from tests.gateway_support import CLONE_TEXT, GatewayServer, clone, fast_settings, running_gateway
from tests.support import assert_error, running_engine, speech_like_signal


def wav_bytes(seconds: float, level: float = 0.5, rate: int = 32000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like_signal(seconds, rate, level=level), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def outcomes(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(r'gateway_references_total\{outcome="([^"]+)"\} (\S+)', text)}


def decoded_seconds(answer: dict[str, object]) -> float:
    import base64

    audio, rate = sf.read(io.BytesIO(base64.b64decode(str(answer["output_audio_base64"]))))
    assert np.abs(audio).max() > 0.05
    return len(audio) / rate


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    shared = tmp_path_factory.mktemp("shared")
    with running_engine("--instant") as engine, running_gateway(fast_settings(shared, [engine.url])) as server:
        yield server


def ref_file(server: GatewayServer, reference_id: str) -> Path:
    return server.settings.refs_dir / f"{reference_id}.wav"


def test_a_known_upload_is_served_from_the_cache_with_the_same_warnings_and_metadata(gateway: GatewayServer) -> None:
    quiet = wav_bytes(5.0, level=0.02)  # peak -34 dBFS: intake warns that the level is very low
    before = outcomes(gateway.url)
    first, second = clone(gateway.url, quiet), clone(gateway.url, quiet)
    assert first.status_code == second.status_code == 200, second.text
    one, two = first.json(), second.json()
    assert any("level is very low" in w for w in one["warnings"]), one["warnings"]
    for key in ("warnings", "reference_id", "voice_id", "output_sample_rate", "output_duration", "text_language"):
        assert one[key] == two[key], key
    assert decoded_seconds(two) == pytest.approx(5.0, abs=0.01)
    after = outcomes(gateway.url)
    assert after.get("stored", 0) - before.get("stored", 0) == 1
    assert after.get("cached", 0) - before.get("cached", 0) == 1


def test_a_deleted_reference_file_is_prepared_and_stored_again(gateway: GatewayServer) -> None:
    upload = wav_bytes(4.0, level=0.4)
    first = clone(gateway.url, upload)
    assert first.status_code == 200, first.text
    path = ref_file(gateway, first.json()["reference_id"])
    content = path.read_bytes()
    path.unlink()  # e.g. an operator's sweep of the shared dir
    before = outcomes(gateway.url)
    second = clone(gateway.url, upload)
    assert second.status_code == 200, second.text
    assert second.json()["reference_id"] == first.json()["reference_id"]
    assert path.read_bytes() == content
    after = outcomes(gateway.url)
    assert after.get("stored", 0) - before.get("stored", 0) == 1
    assert after.get("cached", 0) == before.get("cached", 0)


def test_a_reference_file_cut_short_is_written_again(gateway: GatewayServer) -> None:
    upload = wav_bytes(3.5, level=0.4)
    first = clone(gateway.url, upload)
    path = ref_file(gateway, first.json()["reference_id"])
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])  # as a crash mid-copy on another host would leave it
    assert clone(gateway.url, upload).status_code == 200
    assert path.read_bytes() == content


def test_other_intake_options_are_not_served_from_the_cache(gateway: GatewayServer) -> None:
    long = wav_bytes(12.0)  # over the 10 s window: refused, unless trimming to it was asked for
    refused = clone(gateway.url, long)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "reference_too_long", refused.text
    trimmed = clone(gateway.url, long, trim_reference="true")
    assert trimmed.status_code == 200, trimmed.text
    assert any("was cut from 12.0 s" in w for w in trimmed.json()["warnings"])
    again = clone(gateway.url, long)  # the trimmed result must not answer a request that did not ask for it
    assert again.status_code == 422 and again.json()["error"]["code"] == "reference_too_long"
    cached = clone(gateway.url, long, trim_reference="true")
    assert cached.json()["warnings"] == trimmed.json()["warnings"]
    assert cached.json()["reference_id"] == trimmed.json()["reference_id"]


def test_the_same_audio_with_another_option_reuses_the_file_without_a_cache_hit(gateway: GatewayServer) -> None:
    upload = wav_bytes(6.0, level=0.3)
    assert clone(gateway.url, upload).status_code == 200
    before = outcomes(gateway.url)
    assert clone(gateway.url, upload, trim_reference="true").status_code == 200
    after = outcomes(gateway.url)
    assert after.get("reused", 0) - before.get("reused", 0) == 1
    assert after.get("cached", 0) == before.get("cached", 0)


def test_base64_references_are_cached_too_and_bad_base64_is_refused(gateway: GatewayServer) -> None:
    import base64

    body = {"text": CLONE_TEXT, "text_language": "en",
            "reference_audio_base64": base64.b64encode(wav_bytes(4.5, level=0.3)).decode()}
    first = httpx.post(f"{gateway.url}/v1/voice-clone", json=body, timeout=60)
    assert first.status_code == 200, first.text
    before = outcomes(gateway.url)
    second = httpx.post(f"{gateway.url}/v1/voice-clone", json=body, timeout=60)
    assert second.json()["reference_id"] == first.json()["reference_id"]
    assert outcomes(gateway.url).get("cached", 0) - before.get("cached", 0) == 1
    bad = httpx.post(f"{gateway.url}/v1/voice-clone", json={**body, "reference_audio_base64": "bm90 YmFzZTY0!"})
    assert_error(bad, 422, "invalid_base64")


def entry(name: str) -> StoredReference:
    return StoredReference(name, Path(f"/refs/{name}.wav"), 320044, 32000, 5.0, 0.0, ())


def key(name: str) -> tuple[str, bool, float, float, float]:
    return (name, False, 3.0, 10.0, 60.0)


def test_the_cache_keeps_the_most_recently_used_entries() -> None:
    cache = ReferenceCache(2)
    cache.put(key("a"), entry("a"))
    cache.put(key("b"), entry("b"))
    assert cache.get(key("a")) == entry("a")  # a is now the most recent
    cache.put(key("c"), entry("c"))
    assert cache.get(key("b")) is None and len(cache) == 2
    assert cache.get(key("a")) == entry("a") and cache.get(key("c")) == entry("c")


def test_a_cache_of_size_zero_remembers_nothing() -> None:
    cache = ReferenceCache(0)
    cache.put(key("a"), entry("a"))
    assert cache.get(key("a")) is None and len(cache) == 0
