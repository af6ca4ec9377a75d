"""The CPU engine's legacy api.py flavour against engine-protocol.md §2."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.support import EngineProcess, assert_speech, decode_wav, make_reference, read_until_abort, running_engine

NO_REFERENCE = {"code": 400, "message": "未指定参考音频且接口无预设"}
SUCCESS = {"code": 0, "message": "Success"}
CHANGE_REFER = '缺少任意一项以下参数: "path", "text", "language"'


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refs")
    return {"default": make_reference(root / "default.wav", seconds=4.0),
            "long": make_reference(root / "long.wav", seconds=12.0, f0=200.0)}


@pytest.fixture(scope="module")
def legacy(refs: dict[str, Path]) -> Iterator[EngineProcess]:
    """An api.py engine with a complete default reference (-dr/-dt/-dl) and debug routes."""
    with running_engine("--debug-routes", "--default-refer-path", str(refs["default"]),
                        "--default-refer-text", "A reference sentence.", "--default-refer-language", "en",
                        flavor="v1") as engine:
        yield engine


def test_openapi_lists_the_api_py_paths(legacy: EngineProcess) -> None:
    schema = httpx.get(f"{legacy.url}/openapi.json").json()
    assert set(schema["paths"]) == {"/", "/set_model", "/control", "/change_refer"}
    assert all(set(methods) == {"get", "post"} for methods in schema["paths"].values())
    assert "sovits-gateway CPU engine" in schema["info"]["title"]


def test_default_reference_and_always_chunked(legacy: EngineProcess) -> None:
    response = httpx.get(f"{legacy.url}/", params={"text": "Hello from the legacy server.", "text_language": "en"},
                         timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers.get("transfer-encoding") == "chunked" and "content-length" not in response.headers
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=1.0, max_seconds=6.0)


def test_post_with_explicit_reference_chinese_labels_and_no_duration_check(legacy: EngineProcess,
                                                                           refs: dict[str, Path]) -> None:
    body = {"refer_wav_path": str(refs["long"]), "prompt_text": "参考。", "prompt_language": "中文",
            "text": "你好，世界。", "text_language": "中文", "speed": 1.2}
    response = httpx.post(f"{legacy.url}/", json=body, timeout=60)
    assert response.status_code == 200
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=0.5, max_seconds=6.0)
    english = httpx.post(f"{legacy.url}/", json={**body, "text": "Good morning.", "text_language": "EN"}, timeout=60)
    assert english.status_code == 200


def test_missing_text_or_bad_json_is_a_plain_500(legacy: EngineProcess) -> None:
    for response in (httpx.get(f"{legacy.url}/", params={"text_language": "en"}),
                     httpx.post(f"{legacy.url}/", json={"text_language": "en"}),
                     httpx.post(f"{legacy.url}/", content=b"not json")):
        assert (response.status_code, response.text) == (500, "Internal Server Error")
        assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("overrides", [
    {"text_language": "klingon"},
    {"text_language": None},
    {"refer_wav_path": "/nonexistent/ref.wav", "prompt_text": "x", "prompt_language": "en"},
    {"refer_wav_path": "/nonexistent/ref.wav", "prompt_text": "x", "prompt_language": "xx"},
], ids=["unknown-language", "no-language", "missing-reference", "missing-reference-bad-prompt-language"])
def test_body_errors_abort_after_200(legacy: EngineProcess, overrides: dict[str, Any]) -> None:
    body = {"text": "Hello.", "text_language": "en", **overrides}
    response, received = read_until_abort("POST", f"{legacy.url}/", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    assert received == b""


def test_punctuation_only_text_is_a_header_only_wav(legacy: EngineProcess) -> None:
    response = httpx.get(f"{legacy.url}/", params={"text": "。！", "text_language": "zh"}, timeout=60)
    assert response.status_code == 200
    assert len(response.content) == 44
    info = sf.info(io.BytesIO(response.content))
    assert (info.samplerate, info.frames) == (32000, 0)


def test_control(legacy: EngineProcess) -> None:
    assert httpx.get(f"{legacy.url}/control").text == "null"
    assert httpx.post(f"{legacy.url}/control", json={"command": "dance"}).text == "null"


def test_change_refer_and_set_model_quirks(refs: dict[str, Path], tmp_path: Path) -> None:
    gpt, sovits_v4 = tmp_path / "s1v3.ckpt", tmp_path / "s2Gv4.pth"
    gpt.write_bytes(b"gpt")
    sovits_v4.write_bytes(b"sovits")
    ask = {"text": "Hello there.", "text_language": "en"}
    with running_engine("--debug-routes", flavor="v1") as engine, httpx.Client(base_url=engine.url,
                                                                               timeout=60) as client:
        assert (client.get("/", params=ask).status_code, client.get("/", params=ask).json()) == (400, NO_REFERENCE)
        empty = client.get("/change_refer")
        assert (empty.status_code, empty.json()) == (400, {"code": 400, "message": CHANGE_REFER})
        # A partial update overwrites all three (the others with null): still no usable default.
        assert client.get("/change_refer", params={"refer_wav_path": str(refs["default"])}).json() == SUCCESS
        assert client.post("/", json=ask).json() == NO_REFERENCE
        full = {"refer_wav_path": str(refs["default"]), "prompt_text": "A reference.", "prompt_language": "en"}
        assert client.post("/change_refer", json=full).json() == SUCCESS
        assert client.post("/", json=ask).status_code == 200

        missing = client.get("/set_model", params={"gpt_model_path": str(tmp_path / "no.ckpt"),
                                                   "sovits_model_path": str(sovits_v4)})
        assert (missing.status_code, missing.json()) == (400, {
            "code": 400, "message": f"[Errno 2] No such file or directory: '{tmp_path / 'no.ckpt'}'"})
        half = client.post("/set_model", json={"gpt_model_path": str(gpt)})
        assert half.status_code == 400 and half.json()["code"] == 400
        assert client.get("/_stats").json()["version"] == "v2"  # failed loads keep the old pair
        switched = client.post("/set_model", json={"gpt_model_path": str(gpt), "sovits_model_path": str(sovits_v4)})
        assert switched.json() == SUCCESS
        stats = client.get("/_stats").json()
        assert (stats["version"], stats["gpt_weights"], stats["sovits_weights"], stats["set_weights_calls"]) == (
            "v4", str(gpt), str(sovits_v4), 3)
        v4 = client.post("/", json=ask)
        assert_speech(*decode_wav(v4.content), expected_rate=48000, min_seconds=0.3, max_seconds=4.0)


def test_normal_stream_mode_sends_one_ogg_stream_per_segment(refs: dict[str, Path]) -> None:
    with running_engine("--debug-routes", "--stream-mode", "normal", "--media-type", "wav",
                        "--default-refer-path", str(refs["default"]), "--default-refer-text", "Ref.",
                        "--default-refer-language", "en", flavor="v1") as engine:
        ask = {"text": "The first line.\nThe second line.", "text_language": "en"}
        response = httpx.post(f"{engine.url}/", json=ask, timeout=60)
        assert response.headers["content-type"] == "audio/ogg"  # wav is replaced by ogg when streaming
        assert response.content.count(b"OggS\x00\x02") == 2
        samples, rate = decode_wav(response.content)
        assert rate == 32000 and len(samples) > 0

        httpx.post(f"{engine.url}/_faults", json={"fault": "truncate"})
        cut, received = read_until_abort("POST", f"{engine.url}/", json=ask)
        assert cut.status_code == 200
        assert received.count(b"OggS\x00\x02") == 1


def test_faults_in_the_legacy_flavour(legacy: EngineProcess) -> None:
    ask = {"text": "Hello there.", "text_language": "en"}
    try:
        httpx.post(f"{legacy.url}/_faults", json={"fault": "silence"})
        response = httpx.post(f"{legacy.url}/", json=ask, timeout=60)
        samples, rate = decode_wav(response.content)
        assert (rate, len(samples), float(np.abs(samples).max())) == (16000, 16000, 0.0)

        httpx.post(f"{legacy.url}/_faults", json={"fault": "truncate"})
        cut, received = read_until_abort("POST", f"{legacy.url}/", json=ask)
        assert cut.status_code == 200 and received[:4] == b"RIFF"

        httpx.post(f"{legacy.url}/_faults", json={"fault": "500"})
        failed = httpx.post(f"{legacy.url}/", json=ask, timeout=60)
        assert (failed.status_code, failed.text) == (500, "Internal Server Error")

        httpx.post(f"{legacy.url}/_faults", json={"fault": "hang"})
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{legacy.url}/", json=ask, timeout=httpx.Timeout(30, read=1.0))
        httpx.post(f"{legacy.url}/_faults", json={"fault": None})
        recovered = httpx.post(f"{legacy.url}/", json=ask, timeout=60)  # the hung request let the engine go
        assert_speech(*decode_wav(recovered.content), expected_rate=32000, min_seconds=0.3, max_seconds=4.0)
    finally:
        httpx.post(f"{legacy.url}/_faults", json={"fault": None})


def test_aac_without_ffmpeg_aborts(refs: dict[str, Path]) -> None:
    with running_engine("--media-type", "aac", "--default-refer-path", str(refs["default"]),
                        "--default-refer-text", "Ref.", "--default-refer-language", "en", flavor="v1") as engine:
        response, received = read_until_abort("GET", f"{engine.url}/", params={"text": "Hello.", "text_language": "en"})
    assert response.headers["content-type"] == "audio/aac"
    assert received == b""
