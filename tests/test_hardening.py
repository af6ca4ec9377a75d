"""What an attack on this build found (issue 12, item 8), each through a real gateway on a socket: hostile JSON
(5,000 deep, lone surrogates), a boundary past RFC 2046's length, 405 without `Allow`, `nan` knobs, an empty
`response_format`, a voice name that is a path or hides bidi controls. None may answer 500.

Connection-level defences (header/body read timeouts, the connection cap) are server settings: see
tests/test_slow_clients.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import EngineProcess, assert_error

#: Every route that reads a JSON body, with its method.
JSON_ROUTES = [
    ("POST", "/v1/audio/speech"),
    ("POST", "/v1/voice-clone"),
    ("PUT", "/v1/voices/default"),
    ("POST", "/v1/jobs"),
]


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(tmp_path_factory.mktemp("shared"), [engine_v2.url])) as gw:
        yield gw


def post_json(url: str, raw: str, method: str = "POST") -> httpx.Response:
    """Send `raw` as is: escapes such as a lone `\\udc00` must reach the server untouched by any encoder."""
    return httpx.request(method, url, content=raw.encode(), headers={"content-type": "application/json"}, timeout=30)


def create_voice(url: str, reference: bytes, name: str) -> httpx.Response:
    data = {"name": name, "prompt_text": "Hello there.", "prompt_language": "en"}
    return httpx.post(f"{url}/v1/voices", data=data, files={"audio": ("ref.wav", reference)}, timeout=30)


# ------------------------------------------------------------------------------------------------- JSON


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        "[" * 5000 + "]" * 5000,  # past the C parser's recursion limit: RecursionError
        '{"a":' * 5000 + "1" + "}" * 5000,
        '{"input": "x", "voice": ' + "[" * 40 + "]" * 40 + "}",  # parses, but deeper than any route needs
    ],
    ids=["array-5000", "object-5000", "field-40"],
)
def test_deeply_nested_json_is_400_on_every_json_route(gateway: GatewayServer, method: str, path: str,
                                                      body: str) -> None:
    if path == "/v1/voices/default" and len(body) > 10_000:
        body = "[" * 4900 + "]" * 4900  # its body cap is 10 kB: stay under it so the nesting is what is refused
    assert_error(post_json(gateway.url + path, body, method), 400, "malformed_body", contains="nested deeper")


def test_deeply_nested_job_field_in_a_form_is_400(gateway: GatewayServer) -> None:
    response = httpx.post(f"{gateway.url}/v1/jobs", data={"segments": "[" * 5000 + "]" * 5000}, timeout=30)
    assert_error(response, 400, "malformed_body", contains="nested deeper")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/audio/speech", "voice"),
        ("/v1/audio/speech", "text_language"),
        ("/v1/audio/speech", "response_format"),
        ("/v1/voice-clone", "text_language"),
        ("/v1/voice-clone", "prompt_language"),
        ("/v1/voice-clone", "voice_id"),
    ],
)
def test_lone_surrogate_is_422_and_never_echoed_raw(gateway: GatewayServer, path: str, field: str) -> None:
    text_field = "input" if path == "/v1/audio/speech" else "text"
    response = post_json(gateway.url + path, f'{{"{text_field}": "Hello.", "{field}": "a\\udc00b"}}')
    error = assert_error(response, 422, "invalid_request", contains=field)
    assert "\\udc00" in error["message"]  # escaped, as text
    assert "\udc00" not in response.content.decode("utf-8")  # the body is valid UTF-8 (decode is strict)


def test_surrogate_pairs_are_characters_not_errors(gateway: GatewayServer) -> None:
    """An escaped emoji (a valid pair) passes the check: the request fails later, on the unknown voice."""
    response = post_json(gateway.url + "/v1/audio/speech", '{"input": "Hi \\ud83d\\ude00", "voice": "nobody"}')
    assert_error(response, 404, "voice_not_found")


# ------------------------------------------------------------------------------------------------ forms


def multipart_body(boundary: str) -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\nHello.\r\n--{boundary}--\r\n'
            .encode())


@pytest.mark.parametrize("length", [71, 300])
def test_boundary_over_rfc_2046_length_is_400(gateway: GatewayServer, length: int) -> None:
    boundary = "b" * length
    response = httpx.post(f"{gateway.url}/v1/voice-clone", content=multipart_body(boundary),
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert_error(response, 400, "malformed_body", contains="boundary")


def test_boundary_of_70_characters_is_parsed(gateway: GatewayServer) -> None:
    boundary = "b" * 70
    response = httpx.post(f"{gateway.url}/v1/voice-clone", content=multipart_body(boundary),
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert_error(response, 422, "missing_reference")  # the form was read: only the reference is missing


# ------------------------------------------------------------------------------------------ small things


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/v1/voice-clone", "POST"),
        ("DELETE", "/v1/audio/speech", "POST"),
        ("POST", "/v1/voices/default", "DELETE, GET, PUT"),  # three routes share the path
    ],
)
def test_405_names_the_allowed_methods(gateway: GatewayServer, method: str, path: str, allow: str) -> None:
    response = httpx.request(method, gateway.url + path, timeout=30)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("value", ["NaN", '"nan"', "Infinity", '"-inf"'])
def test_non_finite_knobs_say_finite(gateway: GatewayServer, value: str) -> None:
    body = f'{{"input": "Hello.", "temperature": {value}}}'
    assert_error(post_json(gateway.url + "/v1/audio/speech", body), 422, "invalid_request",
                 contains="temperature: Input should be a finite number")


def test_nan_in_a_form_and_a_job_says_finite(gateway: GatewayServer) -> None:
    response = httpx.post(f"{gateway.url}/v1/voice-clone", data={"text": "Hello.", "speed": "nan"}, timeout=30)
    assert_error(response, 422, "invalid_request", contains="speed: Input should be a finite number")
    job = {"subtitles": "1\n00:00:00,000 --> 00:00:01,000\nHi.\n", "duration_tolerance": float("nan")}
    response = post_json(f"{gateway.url}/v1/jobs", json.dumps(job))
    assert_error(response, 422, "invalid_request", contains="finite number")


@pytest.mark.parametrize("as_form", [False, True])
def test_empty_response_format_is_refused_not_mp3(gateway: GatewayServer, as_form: bool) -> None:
    fields: dict[str, Any] = {"input": "Hello.", "voice": "nobody", "response_format": "", "stream": False}
    url = f"{gateway.url}/v1/audio/speech"
    response = httpx.post(url, data={**fields, "stream": "false"}) if as_form else httpx.post(url, json=fields)
    error = assert_error(response, 400, "unsupported_format", contains="supported: wav, mp3")
    assert "wav" in error["supported"]


# ------------------------------------------------------------------------------------------------ voices


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", 'attachment; filename="etc_passwd.wav"'),
        ("Zoë ☃", "attachment; filename=\"Zoe.wav\"; filename*=UTF-8''Zo%C3%AB%20%E2%98%83.wav"),
        ("日本語", "attachment; filename=\"voice.wav\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.wav"),
        ('say "hi"; x=..\\y',
         "attachment; filename=\"say _hi_ x_y.wav\"; filename*=UTF-8''say%20%22hi%22%3B%20x%3D_y.wav"),
    ],
)
def test_voice_audio_download_has_a_safe_file_name(gateway: GatewayServer, reference: bytes, name: str,
                                                   expected: str) -> None:
    created = create_voice(gateway.url, reference, name)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name  # the name itself is kept; only the file name is made safe
    response = httpx.get(f"{gateway.url}/v1/voices/{created.json()['id']}/audio", timeout=30)
    assert response.status_code == 200 and response.content[:4] == b"RIFF"
    assert response.headers["content-disposition"] == expected
    assert "/" not in expected and "\\" not in expected.split("filename*")[0]


@pytest.mark.parametrize(
    "char", ["\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\u2028", "\x07"],
    ids=["RLO", "LRI", "ZWSP", "ZWJ", "BOM", "LS", "BEL"],
)
def test_voice_names_refuse_invisible_and_bidi_characters(gateway: GatewayServer, reference: bytes,
                                                          char: str) -> None:
    response = create_voice(gateway.url, reference, f"anna{char}gpj.wav")
    error = assert_error(response, 422, "invalid_voice_name", contains=f"U+{ord(char):04X}")
    assert char not in error["message"]
