"""Request limits through the HTTP API: form parts and field caps, body caps, audio length, text length,
the reference window, an unknown model or language refused before any reference work, one multipart body
allowance with or without a Content-Length, and `/readyz` and uploads (503 `storage_unavailable`) when the
shared dir cannot be written.

One CPU engine subprocess and one gateway on a real socket for the module, started with tight limits so
every cap can be hit on both sides of its edge (just inside: the request gets past the cap and fails on a
later, cheaper check; just over: the cap answers).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway.api.uploads import MAX_FIELD_BYTES, MAX_FIELDS_TOTAL_BYTES, MULTIPART_OVERHEAD_BYTES
from tests.gateway_support import GatewayServer, clone, fast_settings, running_gateway
from tests.support import assert_error, make_reference, running_engine, wait_until

TEXT = "The quick brown fox jumps over the lazy dog."
MAX_UPLOAD = 3_000_000  # a multiple of 3: some base64 length decodes to exactly the cap
JSON_CAP = MAX_UPLOAD * 4 // 3 + 1_000_000  # what voice_clone allows a JSON body (base64 + other fields)
MAX_TEXT = 200
MIN_REF, MAX_REF = 4.0, 6.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    shared = tmp_path_factory.mktemp("shared")
    with running_engine(flavor="v2") as engine, running_gateway(
        fast_settings(shared, [engine.url], max_upload_bytes=MAX_UPLOAD, max_text_chars=MAX_TEXT,
                      min_reference_seconds=MIN_REF, max_reference_seconds=MAX_REF)
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("refs")


# ---------------------------------------------------------------------------------------------- helpers


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "LimitsBoundary") -> tuple[bytes, str]:
    """A raw multipart/form-data body from (name, value, filename-or-None) parts, and its Content-Type.

    Built by hand so a test controls exactly how many parts there are and what repeats.
    """
    body = bytearray()
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        body += b"Content-Type: audio/wav\r\n" if filename else b""
        body += b"\r\n" + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def post_multipart(url: str, parts: list[tuple[str, bytes, str | None]]) -> httpx.Response:
    body, content_type = multipart(parts)
    return httpx.post(f"{url}/v1/voice-clone", content=body, headers={"Content-Type": content_type}, timeout=60)


def chunked(body: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    """The body as a generator: httpx then sends it chunked, without a Content-Length to refuse up front."""
    for start in range(0, len(body), size):
        yield body[start : start + size]



def text_fields(count: int, size: int = 1) -> list[tuple[str, bytes, str | None]]:
    """`count` parts all named "text" (the last one wins), each `size` bytes: parts without extra fields."""
    return [("text", b"a" * size, None)] * count


# ------------------------------------------------------------------------------------------ multipart


def test_form_with_more_than_64_parts_is_413(gateway: GatewayServer) -> None:
    # 64 parts (the documented limit) get through the parser: the request then fails on the missing reference
    assert_error(post_multipart(gateway.url, text_fields(64)), 422, "missing_reference")
    response = post_multipart(gateway.url, text_fields(65))
    assert_error(response, 413, "payload_too_large", contains="form has more than 64 parts")


def test_text_field_over_its_cap_is_413(gateway: GatewayServer) -> None:
    at_cap = post_multipart(gateway.url, [("text", b"a" * MAX_FIELD_BYTES, None)])
    assert_error(at_cap, 422, "text_too_long", contains=f"text is {MAX_FIELD_BYTES} characters")
    over = post_multipart(gateway.url, [("text", b"a" * (MAX_FIELD_BYTES + 1), None)])
    assert_error(over, 413, "payload_too_large", contains=f"field 'text' is larger than {MAX_FIELD_BYTES} bytes")
    prompt = post_multipart(gateway.url, [("text", b"hi", None), ("prompt_text", b"p" * (MAX_FIELD_BYTES + 1), None)])
    assert_error(prompt, 413, "payload_too_large", contains="field 'prompt_text' is larger")


def test_text_fields_together_over_their_cap_are_413(gateway: GatewayServer) -> None:
    # each part is within its own cap; four of them exactly fill the total, a fifth byte passes it
    each = MAX_FIELDS_TOTAL_BYTES // 4
    assert each <= MAX_FIELD_BYTES
    at_cap = post_multipart(gateway.url, text_fields(4, each))
    assert_error(at_cap, 422, "text_too_long")
    over = post_multipart(gateway.url, [*text_fields(4, each), ("text_language", b"e", None)])
    assert_error(over, 413, "payload_too_large", contains=f"larger than {MAX_FIELDS_TOTAL_BYTES} bytes")


def test_file_field_sent_twice_is_refused(gateway: GatewayServer, refs: Path) -> None:
    reference = make_reference(refs / "twice.wav", seconds=5.0).read_bytes()
    parts: list[tuple[str, bytes, str | None]] = [
        ("text", TEXT.encode(), None), ("text_language", b"en", None),
        ("audio", reference, "a.wav"), ("audio", reference, "b.wav"),
    ]
    assert_error(post_multipart(gateway.url, parts), 422, "unexpected_file", contains="'audio' was sent twice")


# ------------------------------------------------------------------------------------- JSON, urlencoded


def json_body(size: int, **fields: str) -> bytes:
    """A JSON object of exactly `size` bytes: `fields`, then "text" padded with letters to fill the size."""
    skeleton = json.dumps({**fields, "text": ""}).encode()
    pad = size - len(skeleton)
    assert pad >= 0
    return json.dumps({**fields, "text": "a" * pad}).encode()


def post_json(url: str, body: bytes | Iterator[bytes]) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/voice-clone", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )


def test_json_body_over_its_cap_is_413(gateway: GatewayServer) -> None:
    at_cap = json_body(JSON_CAP)
    assert len(at_cap) == JSON_CAP
    assert_error(post_json(gateway.url, at_cap), 422, "text_too_long")  # read and parsed whole
    over = json_body(JSON_CAP + 1)
    assert_error(post_json(gateway.url, over), 413, "payload_too_large",
                 contains=f"request body is {JSON_CAP + 1} bytes; the limit is {JSON_CAP} bytes")
    # no Content-Length: the cap holds while the body streams in
    assert_error(post_json(gateway.url, chunked(over)), 413, "payload_too_large",
                 contains=f"larger than the {JSON_CAP} byte limit")


def test_base64_reference_over_the_upload_cap_is_413(gateway: GatewayServer) -> None:
    def with_base64(characters: int) -> bytes:
        # "AAAA" decodes to zero bytes: valid base64 of no known audio format
        return json.dumps({"text": TEXT, "text_language": "en", "reference_audio_base64": "A" * characters}).encode()

    fits = MAX_UPLOAD * 4 // 3  # decodes to exactly the cap
    assert_error(post_json(gateway.url, with_base64(fits)), 415, "unsupported_audio")
    over = post_json(gateway.url, with_base64(fits + 4))
    error = assert_error(over, 413, "payload_too_large", contains=f"larger than the {MAX_UPLOAD} byte limit")
    assert error["limit_bytes"] == MAX_UPLOAD


def test_urlencoded_body_over_its_cap_is_413(gateway: GatewayServer) -> None:
    def post_form(body: bytes | Iterator[bytes]) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return httpx.post(f"{gateway.url}/v1/voice-clone", content=body, headers=headers, timeout=60)

    prefix = b"text="
    at_cap = prefix + b"a" * (MAX_FIELD_BYTES - len(prefix))
    assert_error(post_form(at_cap), 422, "text_too_long")
    over = at_cap + b"a"
    assert_error(post_form(over), 413, "payload_too_large",
                 contains=f"request body is {MAX_FIELD_BYTES + 1} bytes; the limit is {MAX_FIELD_BYTES} bytes")
    assert_error(post_form(chunked(over)), 413, "payload_too_large",
                 contains=f"larger than the {MAX_FIELD_BYTES} byte limit")


# ------------------------------------------------------------------------------------- audio and text


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_recording_over_the_decode_limit_is_413(gateway: GatewayServer, refs: Path, suffix: str) -> None:
    long = make_reference(refs / f"long.{suffix}", seconds=61.0, rate=16000).read_bytes()
    assert len(long) < MAX_UPLOAD  # under the byte cap: the length is what refuses it
    for trim in ("false", "true"):  # trimming on request does not lift the decode limit
        error = assert_error(clone(gateway.url, long, trim_reference=trim), 413, "audio_too_long",
                             contains="the audio is 61.0 s long; at most 60 s of audio is accepted")
        assert error["max_seconds"] == 60.0


def test_recording_at_the_decode_limit_is_decoded_and_can_be_trimmed(gateway: GatewayServer, refs: Path) -> None:
    sixty = make_reference(refs / "sixty.wav", seconds=60.0, rate=16000).read_bytes()
    error = assert_error(clone(gateway.url, sixty), 422, "reference_too_long", contains="4.0–6.0 s")
    assert 59.5 < error["duration"] <= 60.0  # less its trimmed edges
    response = clone(gateway.url, sixty, trim_reference="true")
    assert response.status_code == 200, response.text
    assert any("was cut from" in warning for warning in response.json()["warnings"])


def test_text_over_max_text_chars(gateway: GatewayServer) -> None:
    # at the limit the text check passes and the request fails on the missing reference instead
    assert_error(clone(gateway.url, None, text="a" * MAX_TEXT), 422, "missing_reference")
    error = assert_error(clone(gateway.url, None, text="a" * (MAX_TEXT + 1)), 422, "text_too_long",
                         contains=f"text is {MAX_TEXT + 1} characters; the limit is {MAX_TEXT}")
    assert error["limit"] == MAX_TEXT


def test_reference_window_comes_from_the_settings(gateway: GatewayServer, refs: Path) -> None:
    short = make_reference(refs / "short.wav", seconds=3.5).read_bytes()  # inside the default 3-10 s
    error = assert_error(clone(gateway.url, short), 422, "reference_too_short", contains="accepts 4.0–6.0 s")
    assert 3.0 < error["duration"] < MIN_REF
    assert f"is {error['duration']:.1f} s after trimming" in error["message"]
    assert (error["min_seconds"], error["max_seconds"]) == (MIN_REF, MAX_REF)
    long = make_reference(refs / "seven.wav", seconds=7.0).read_bytes()  # inside the default too
    error = assert_error(clone(gateway.url, long), 422, "reference_too_long", contains="accepts 4.0–6.0 s")
    assert MAX_REF < error["duration"] <= 7.0
    assert f"is {error['duration']:.1f} s after trimming" in error["message"]
    fits = make_reference(refs / "five.wav", seconds=5.0).read_bytes()
    response = clone(gateway.url, fits)
    assert response.status_code == 200, response.text
    assert response.json()["output_duration"] > 0.5


# ------------------------------------------------------------------------------------------- readiness


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


def test_readyz_is_503_while_the_shared_dir_cannot_be_written(gateway: GatewayServer) -> None:
    refs_dir = gateway.settings.refs_dir
    wait_until(lambda: ready(gateway.url).status_code == 200)
    # root ignores permission bits: a regular file where the directory should be makes every write fail
    aside = refs_dir.with_name("refs.aside")
    refs_dir.rename(aside)
    try:
        refs_dir.write_bytes(b"not a directory")
        response = ready(gateway.url)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        body = response.json()
        assert body["status"] == "not_ready"
        assert body["shared_dir"]["writable"] is False
        assert "error" not in body["shared_dir"] and str(refs_dir) not in response.text  # paths: operators only
        verbose = httpx.get(f"{gateway.url}/readyz", params={"verbose": 1}, timeout=10).json()
        assert str(refs_dir) in verbose["shared_dir"]["error"]
        assert body["ready"] is True  # the engines are fine: the shared dir alone makes it not ready
    finally:
        if refs_dir.is_file():
            refs_dir.unlink()
    # fixed by removing the file: the probe makes the directory again (as after an emptied volume)
    response = ready(gateway.url)
    assert response.status_code == 200, response.text
    assert response.json()["shared_dir"] == {"writable": True}
    verbose = httpx.get(f"{gateway.url}/readyz", params={"verbose": 1}, timeout=10).json()["shared_dir"]
    assert verbose == {"path": str(gateway.settings.shared_dir), "writable": True, "error": None}
    assert refs_dir.is_dir()
    shutil.rmtree(aside)  # content-addressed references: they are written again when next uploaded


# ------------------------------------------------------------------------------ an unwritable shared dir


@contextmanager
def refs_dir_replaced_by_a_file(gateway: GatewayServer) -> Iterator[Path]:
    """`refs/` as a regular file for the duration (root ignores permission bits); the directory is put back."""
    refs_dir = gateway.settings.refs_dir
    refs_dir.mkdir(parents=True, exist_ok=True)
    aside = refs_dir.with_name("refs.kept")
    refs_dir.rename(aside)
    try:
        refs_dir.write_bytes(b"not a directory")
        yield refs_dir
    finally:
        if refs_dir.is_file():
            refs_dir.unlink()
        shutil.rmtree(refs_dir, ignore_errors=True)  # in case a readiness probe made it again
        aside.rename(refs_dir)


def upload_to_clone(url: str, reference: bytes) -> httpx.Response:
    return clone(url, reference)


def upload_to_speech(url: str, reference: bytes) -> httpx.Response:
    data = {"model": "gpt-sovits", "input": TEXT, "response_format": "wav", "prompt_language": "en"}
    files = {"reference_audio": ("ref.wav", reference, "audio/wav")}
    return httpx.post(f"{url}/v1/audio/speech", data=data, files=files, timeout=120)


def upload_to_voices(url: str, reference: bytes) -> httpx.Response:
    data = {"name": "Stored Nowhere", "prompt_language": "en"}
    return httpx.post(f"{url}/v1/voices", data=data, files={"audio": ("ref.wav", reference, "audio/wav")}, timeout=120)


@pytest.mark.parametrize("send", [upload_to_clone, upload_to_speech, upload_to_voices],
                         ids=["voice-clone", "speech", "voices"])
def test_upload_while_the_shared_dir_cannot_be_written_is_503(
    gateway: GatewayServer, refs: Path, send: Callable[[str, bytes], httpx.Response]
) -> None:
    # a reference no other test uploads, so it is not already stored
    reference = make_reference(refs / f"storage-{send.__name__}.wav", seconds=5.0, f0=150.0).read_bytes()
    with refs_dir_replaced_by_a_file(gateway):
        response = send(gateway.url, reference)
        error = assert_error(response, 503, "storage_unavailable")
        assert error["message"] == (
            "the gateway cannot store the reference recording right now (its shared directory is not "
            "writable); try again later"
        )
        assert response.headers["retry-after"] == "5"
        assert error["retry_after"] == 5
        assert str(gateway.settings.shared_dir) not in response.text  # no host paths to the client
    # nothing was taken: the same upload works once the directory is back
    names = [voice["name"] for voice in httpx.get(f"{gateway.url}/v1/voices", timeout=10).json()["voices"]]
    assert "Stored Nowhere" not in names
    response = send(gateway.url, reference)
    assert response.status_code in (200, 201), response.text
    answer = {} if "x-reference-id" in response.headers else response.json()
    sha256 = response.headers.get("x-reference-id") or answer.get("reference_id") or answer["reference_sha256"]
    assert (gateway.settings.refs_dir / f"{sha256}.wav").is_file()
    if send is upload_to_voices:
        httpx.delete(f"{gateway.url}/v1/voices/{response.json()['id']}", timeout=10).raise_for_status()


# ------------------------------------------------------------------------------------------- unknown model


def test_unknown_model_is_refused_before_any_reference_work(gateway: GatewayServer, refs: Path) -> None:
    refs_dir = gateway.settings.refs_dir
    reference = make_reference(refs / "unknown-model.wav", seconds=5.0, f0=170.0).read_bytes()
    before = sorted(refs_dir.iterdir())
    unknown = "model 'nobody' is not configured; known models: none are configured"
    assert_error(clone(gateway.url, reference, model="nobody"), 422, "unknown_model", contains=unknown)
    assert sorted(refs_dir.iterdir()) == before  # not decoded into the shared dir
    # a base64 reference is not even decoded: the model is refused first
    body = json.dumps({"text": TEXT, "text_language": "en", "model": "nobody", "reference_audio_base64": "!!!"})
    assert_error(post_json(gateway.url, body.encode()), 422, "unknown_model", contains=unknown)


# ------------------------------------------------------------------------------ refused before reference work


@pytest.mark.parametrize(("route", "field", "f0"), [("voice-clone", "prompt_language", 180.0),
                                                    ("speech", "text_language", 190.0),
                                                    ("speech", "prompt_language", 200.0)])
def test_unsupported_language_is_refused_before_any_reference_work(
    gateway: GatewayServer, refs: Path, route: str, field: str, f0: float
) -> None:
    refs_dir = gateway.settings.refs_dir
    # a reference no other test uploads, so storing it would add a file
    reference = make_reference(refs / f"language-{route}-{field}.wav", seconds=5.0, f0=f0).read_bytes()
    before = sorted(refs_dir.iterdir())
    if route == "voice-clone":
        response = clone(gateway.url, reference, **{field: "klingon"})
    else:
        data = {"model": "gpt-sovits", "input": TEXT, "response_format": "wav", field: "klingon"}
        files = {"reference_audio": ("ref.wav", reference, "audio/wav")}
        response = httpx.post(f"{gateway.url}/v1/audio/speech", data=data, files=files, timeout=120)
    error = assert_error(response, 422, "unsupported_language",
                         contains=f"{field} 'klingon' is not supported by the engines; use one of: ")
    assert error["field"] == field
    assert sorted(refs_dir.iterdir()) == before  # not decoded into the shared dir


# ------------------------------------------------------------------------------------ multipart body cap


def test_multipart_body_allowance_is_the_same_with_or_without_a_content_length(gateway: GatewayServer) -> None:
    # `audio` plus up to GATEWAY_MAX_AUX_REFERENCES (4) `aux_audio` files on this route, each at the upload cap
    allowance = MAX_UPLOAD * 5 + MAX_FIELDS_TOTAL_BYTES + MULTIPART_OVERHEAD_BYTES
    form, content_type = multipart([("text", TEXT.encode(), None), ("text_language", b"en", None)])

    def post(size: int, send_chunked: bool) -> httpx.Response:
        # padded with an epilogue (which the parser discards): no part passes its own cap, only the body can
        body = form + b"x" * (size - len(form))
        return httpx.post(f"{gateway.url}/v1/voice-clone", content=chunked(body) if send_chunked else body,
                          headers={"Content-Type": content_type}, timeout=60)

    for send_chunked in (False, True):
        # at the allowance the body is read whole: the form then lacks a reference
        assert_error(post(allowance, send_chunked), 422, "missing_reference")
        error = assert_error(post(allowance + 1, send_chunked), 413, "payload_too_large")
        assert error["message"] == (f"request body is larger than the {allowance} byte limit for this form "
                                    f"(files up to {MAX_UPLOAD} bytes each, plus form fields)")
        assert error["limit_bytes"] == allowance
