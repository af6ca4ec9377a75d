"""The CPU engine's api_v2 flavour against engine-protocol.md §3: validation, references, formats, streaming."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import (
    EngineProcess,
    assert_speech,
    decode_wav,
    make_reference,
    pcm16,
    read_until_abort,
    running_engine,
    tts_params,
    wait_ready,
    wav_stream_header,
)

RANGE_MESSAGE = "Reference audio is outside the 3-10 second range, please choose another one!"


@pytest.fixture
def client(engine_v2: EngineProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine_v2.url, timeout=60) as session:
        yield session


# --- discovery ----------------------------------------------------------------------------------------


def test_openapi_lists_the_real_paths_and_says_what_it_is(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/control", "/tts", "/set_refer_audio", "/set_gpt_weights", "/set_sovits_weights"}
    assert set(schema["paths"]["/tts"]) == {"get", "post"}
    assert "sovits-gateway CPU engine" in schema["info"]["title"]
    assert "GPT-SoVITS" not in schema["info"]["title"]


def test_routes_methods_and_control(client: httpx.Client) -> None:
    assert client.post("/control", json={"command": "restart"}).status_code == 405
    assert client.post("/set_gpt_weights").json() == {"detail": "Method Not Allowed"}
    assert client.head("/tts").status_code == 405
    assert client.get("/nowhere").json() == {"detail": "Not Found"}
    missing = client.get("/control")
    assert (missing.status_code, missing.json()) == (400, {"message": "command is required"})
    unknown = client.get("/control", params={"command": "dance"})
    assert (unknown.status_code, unknown.text) == (200, "null")


# --- §3.5 validation table ------------------------------------------------------------------------------

VALIDATION_ROWS = [
    # (description, GET query or None, POST body or None, expected message)
    ("1 ref missing", {"text": "hi", "text_lang": "en", "prompt_lang": "en"}, {"text": "hi", "text_lang": "en",
     "prompt_lang": "en"}, "ref_audio_path is required"),
    ("2 text missing", {"text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "en"},
     {"text": "", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "en"}, "text is required"),
    ("3 text_lang missing", {"text": "hi", "text_lang": "", "ref_audio_path": "r.wav", "prompt_lang": "en"},
     {"text": "hi", "ref_audio_path": "r.wav", "prompt_lang": "en"}, "text_lang is required"),
    ("4 text_lang unknown", {"text": "hi", "text_lang": "xx", "ref_audio_path": "r.wav", "prompt_lang": "en"},
     {"text": "hi", "text_lang": "xx", "ref_audio_path": "r.wav", "prompt_lang": "en"},
     "text_lang: xx is not supported in version v2"),
    ("5 prompt_lang missing", {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": ""},
     {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav"}, "prompt_lang is required"),
    ("6 prompt_lang unknown", {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "de"},
     {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "de"},
     "prompt_lang: de is not supported in version v2"),
    ("7 media_type", {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "en",
     "media_type": "mp3"}, {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "en",
     "media_type": "mp3"}, "media_type: mp3 is not supported"),
    ("8 split method", {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "en",
     "text_split_method": "cut9"}, {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav",
     "prompt_lang": "en", "text_split_method": "cut9"}, "text_split_method:cut9 is not supported"),
    ("9 streaming_mode", {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "en",
     "streaming_mode": "5"}, {"text": "hi", "text_lang": "en", "ref_audio_path": "r.wav", "prompt_lang": "en",
     "streaming_mode": 5}, "the value of streaming_mode must be 0, 1, 2, 3(int) or true/false(bool)"),
]


@pytest.mark.parametrize(("query", "body", "message"), [row[1:] for row in VALIDATION_ROWS],
                         ids=[row[0] for row in VALIDATION_ROWS])
def test_validation_rows_get_and_post(client: httpx.Client, query: dict[str, Any], body: dict[str, Any],
                                      message: str) -> None:
    for response in (client.get("/tts", params=query), client.post("/tts", json=body)):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"message": message}


def test_validation_order_first_failure_wins(client: httpx.Client) -> None:
    response = client.post("/tts", json={"text_lang": "xx", "media_type": "mp3", "prompt_lang": "en"})
    assert response.json() == {"message": "ref_audio_path is required"}
    response = client.post("/tts", json={"ref_audio_path": "r.wav", "text": "hi", "text_lang": "xx",
                                         "media_type": "mp3"})
    assert response.json() == {"message": "text_lang: xx is not supported in version v2"}


@pytest.mark.parametrize("missing", ["text_lang", "prompt_lang"])
def test_get_without_a_language_is_a_plain_500_and_the_connection_closes(engine_v2: EngineProcess,
                                                                         missing: str) -> None:
    query = "text=hi&text_lang=en&prompt_lang=en".replace(f"&{missing}=en", "")
    with socket.create_connection(("127.0.0.1", engine_v2.port), timeout=10) as sock:
        sock.sendall(f"GET /tts?{query} HTTP/1.1\r\nHost: engine\r\nConnection: keep-alive\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):  # returns b"" only when the server closes the connection
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500")
    assert b"content-type: text/plain" in head.lower()
    assert body == b"Internal Server Error"


@pytest.mark.parametrize(("method", "kwargs", "location"), [
    ("GET", {"params": {"text_lang": "en", "prompt_lang": "en", "top_k": "abc"}}, ["query", "top_k"]),
    ("GET", {"params": {"text_lang": "en", "prompt_lang": "en", "streaming_mode": "abc"}}, ["query", "streaming_mode"]),
    ("POST", {"json": {"text": None}}, ["body", "text"]),
    ("POST", {"json": {"prompt_text": None}}, ["body", "prompt_text"]),
    ("POST", {"json": {"aux_ref_audio_paths": None}}, ["body", "aux_ref_audio_paths"]),
    ("POST", {"json": {"top_k": "many"}}, ["body", "top_k"]),
], ids=["get-int", "get-streaming", "post-null-text", "post-null-prompt", "post-null-list", "post-int"])
def test_type_errors_and_json_nulls_are_fastapi_422(client: httpx.Client, method: str, kwargs: dict[str, Any],
                                                   location: list[str]) -> None:
    response = client.request(method, "/tts", **kwargs)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail and all(item["loc"][:2] == location for item in detail)  # a union reports each member
    assert {"type", "loc", "msg", "input"} <= set(detail[0])


def test_uppercase_language_passes_get_but_fails_post_with_empty_exception(client: httpx.Client,
                                                                           ref: Path) -> None:
    response = client.post("/tts", json=tts_params(ref, text_lang="EN"))
    assert (response.status_code, response.json()) == (400, {"message": "tts failed", "Exception": ""})
    response = client.get("/tts", params=tts_params(ref, text_lang="EN", prompt_lang="EN"))
    assert response.status_code == 200
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=1.0, max_seconds=8.0)


# --- synthesis, references ----------------------------------------------------------------------------


def test_mode0_wav_is_speech_with_content_length(client: httpx.Client, ref: Path) -> None:
    response = client.post("/tts", json=tts_params(ref))
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content[:4] == b"RIFF"
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=1.0, max_seconds=8.0)


def test_reference_free_mode_when_prompt_text_is_empty(client: httpx.Client, ref: Path) -> None:
    response = client.get("/tts", params=tts_params(ref, prompt_text=""))
    assert response.status_code == 200
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=1.0, max_seconds=8.0)


@pytest.mark.parametrize("seconds", [2.0, 12.0])
def test_reference_outside_3_to_10_seconds(client: httpx.Client, tmp_path: Path, seconds: float) -> None:
    ref = make_reference(tmp_path / f"ref{seconds}.wav", seconds=seconds)
    response = client.post("/tts", json=tts_params(ref))
    assert (response.status_code, response.json()) == (400, {"message": "tts failed", "Exception": RANGE_MESSAGE})
    response = client.get("/set_refer_audio", params={"refer_audio_path": str(ref)})
    assert (response.status_code, response.json()) == (400, {"message": "set refer audio failed",
                                                             "Exception": RANGE_MESSAGE})


def test_missing_reference(client: httpx.Client, tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    response = client.post("/tts", json=tts_params(missing))
    assert (response.status_code, response.json()) == (400, {"message": "tts failed",
                                                             "Exception": f"{missing} not exists"})
    response = client.get("/set_refer_audio", params={"refer_audio_path": str(missing)})
    assert response.status_code == 400
    assert response.json()["message"] == "set refer audio failed"
    assert str(missing) in response.json()["Exception"]


@pytest.mark.parametrize(("seconds", "rate", "accepted"), [
    (3.0, 44100, True), (10.0, 48000, True), (2.99, 16000, False), (10.01, 22050, False),
])
def test_duration_rule_is_counted_at_16k_like_the_engine(client: httpx.Client, tmp_path: Path, seconds: float,
                                                         rate: int, accepted: bool) -> None:
    ref = make_reference(tmp_path / "edge.flac", seconds=seconds, rate=rate, channels=2)
    response = client.get("/set_refer_audio", params={"refer_audio_path": str(ref)})
    expected = {"message": "success"} if accepted else {"message": "set refer audio failed",
                                                         "Exception": RANGE_MESSAGE}
    assert response.json() == expected


def test_stereo_flac_reference_is_accepted(client: httpx.Client, tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "stereo.flac", seconds=4.0, rate=48000, channels=2)
    response = client.post("/tts", json=tts_params(ref, text="Stereo works."))
    assert response.status_code == 200
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=0.5, max_seconds=5.0)


@pytest.mark.parametrize(("text", "lang"), [("你好，世界。今天天气很好。", "all_zh"), ("こんにちは、世界。", "ja")])
def test_chinese_and_japanese_text(client: httpx.Client, ref: Path, text: str, lang: str) -> None:
    response = client.post("/tts", json=tts_params(ref, text=text, text_lang=lang, prompt_lang="en"))
    assert response.status_code == 200, response.text
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=0.8, max_seconds=10.0)


def test_punctuation_only_text(client: httpx.Client, ref: Path) -> None:
    response = client.post("/tts", json=tts_params(ref, text="。，！"))
    assert response.status_code == 200
    samples, rate = decode_wav(response.content)
    assert (rate, len(samples), float(np.abs(samples).max())) == (16000, 16000, 0.0)
    streamed = client.post("/tts", json=tts_params(ref, text="。，！", streaming_mode=1))
    assert (streamed.status_code, streamed.content) == (200, b"")


# --- media types --------------------------------------------------------------------------------------


def test_raw_mode0_is_bare_pcm(client: httpx.Client, ref: Path) -> None:
    response = client.post("/tts", json=tts_params(ref, media_type="raw"))
    assert response.headers["content-type"] == "audio/raw"
    assert response.content[:4] != b"RIFF"
    assert_speech(pcm16(response.content), 32000, expected_rate=32000, min_seconds=1.0, max_seconds=8.0)


def test_ogg_mode0_is_vorbis(client: httpx.Client, ref: Path) -> None:
    response = client.post("/tts", json=tts_params(ref, media_type="ogg"))
    assert response.headers["content-type"] == "audio/ogg"
    assert response.content[:4] == b"OggS"
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=1.0, max_seconds=8.0)


def test_aac_fails_like_an_engine_without_ffmpeg(client: httpx.Client, ref: Path) -> None:
    response = client.post("/tts", json=tts_params(ref, media_type="aac"))
    assert (response.status_code, response.json()) == (400, {
        "message": "tts failed", "Exception": "[Errno 2] No such file or directory: 'ffmpeg'"})
    streamed, _ = read_until_abort("POST", str(client.base_url.join("/tts")),
                                   json=tts_params(ref, media_type="aac", streaming_mode=1))
    assert streamed.status_code == 200


# --- versions and weights -------------------------------------------------------------------------------


def test_weight_switching_changes_version_rate_and_languages(tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "ref.wav")
    weights = {name: tmp_path / name for name in ("s1v3.ckpt", "s2Gv3.pth", "s2Gv4.pth", "s2Gv2ProPlus.pth",
                                                    "s2G488k_v1.pth")}
    for path in weights.values():
        path.write_bytes(b"weights")
    with running_engine("--debug-routes") as engine, httpx.Client(base_url=engine.url, timeout=60) as client:
        assert client.get("/set_gpt_weights").json() == {"message": "gpt weight path is required"}
        assert client.get("/set_sovits_weights", params={"weights_path": ""}).json() == {
            "message": "sovits weight path is required"}
        failed = client.get("/set_gpt_weights", params={"weights_path": str(tmp_path / "nope.ckpt")})
        assert (failed.status_code, failed.json()) == (400, {
            "message": "change gpt weight failed",
            "Exception": f"[Errno 2] No such file or directory: '{tmp_path / 'nope.ckpt'}'"})
        assert client.get("/set_gpt_weights", params={"weights_path": str(weights["s1v3.ckpt"])}).json() == {
            "message": "success"}

        def switch(name: str) -> None:
            response = client.get("/set_sovits_weights", params={"weights_path": str(weights[name])})
            assert response.json() == {"message": "success"}

        switch("s2Gv3.pth")
        no_prompt = client.post("/tts", json=tts_params(ref, prompt_text=""))
        assert no_prompt.json() == {"message": "tts failed",
                                    "Exception": "prompt_text cannot be empty when using SoVITS_V3"}
        v3 = client.post("/tts", json=tts_params(ref, text="Version three."))
        assert_speech(*decode_wav(v3.content), expected_rate=24000, min_seconds=0.5, max_seconds=5.0)

        switch("s2Gv4.pth")
        v4 = client.post("/tts", json=tts_params(ref, text="Version four.", streaming_mode=3))
        assert v4.content[:44] == wav_stream_header(48000)

        switch("s2Gv2ProPlus.pth")
        assert client.get("/_stats").json()["version"] == "v2ProPlus"

        switch("s2G488k_v1.pth")
        korean = client.post("/tts", json=tts_params(ref, text="안녕", text_lang="ko"))
        assert korean.json() == {"message": "text_lang: ko is not supported in version v1"}
        v1 = client.post("/tts", json=tts_params(ref, text="Version one."))
        assert_speech(*decode_wav(v1.content), expected_rate=32000, min_seconds=0.5, max_seconds=5.0)

        stats = client.get("/_stats").json()
        assert stats["version"] == "v1"
        assert stats["gpt_weights"] == str(weights["s1v3.ckpt"])
        assert stats["sovits_weights"] == str(weights["s2G488k_v1.pth"])
        assert stats["set_weights_calls"] == 8
        assert set(client.get("/openapi.json").json()["paths"]) >= {"/tts", "/set_gpt_weights"}


def test_model_version_flag_sets_the_start_up_model(tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "ref.wav")
    with running_engine("--model-version", "v4") as engine:
        response = httpx.post(f"{engine.url}/tts", json=tts_params(ref, text="Forty eight."), timeout=60)
    assert_speech(*decode_wav(response.content), expected_rate=48000, min_seconds=0.5, max_seconds=5.0)


def test_control_restart_reloads_and_exit_ends_the_process(tmp_path: Path) -> None:
    weights = tmp_path / "gpt.ckpt"
    weights.write_bytes(b"gpt")
    with running_engine("--debug-routes") as engine:
        pid = engine.proc.pid
        httpx.get(f"{engine.url}/set_gpt_weights", params={"weights_path": str(weights)})
        assert httpx.get(f"{engine.url}/_stats").json()["gpt_weights"] == str(weights)
        with pytest.raises(httpx.RemoteProtocolError):  # no answer: the process re-executes itself
            httpx.get(f"{engine.url}/control", params={"command": "restart"}, timeout=30)
        wait_ready(engine.url, timeout=60)
        assert engine.proc.poll() is None and engine.proc.pid == pid
        assert httpx.get(f"{engine.url}/_stats").json()["gpt_weights"] is None  # models reloaded from scratch
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{engine.url}/control", params={"command": "exit"}, timeout=30)
        assert engine.proc.wait(timeout=10) == 0
