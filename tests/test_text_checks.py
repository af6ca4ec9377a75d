"""Text no engine can speak is refused with 422 before any engine call (issue 9, item 8).

A NUL byte makes the engine answer 400 "embedded null character"; before this check the gateway sent it
and counted the answer against the engine. What reached the engine is read at the engine (`/_stats`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway_support import GatewayServer, clone, fast_settings, running_gateway
from tests.support import EngineProcess, assert_error, assert_speech, decode_wav, engine_stats


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(tmp_path_factory.mktemp("shared"), [engine_v2.url])) as gw:
        yield gw


@pytest.mark.parametrize(
    ("text", "character", "position"),
    [
        ("Hello\x00world.", "U+0000", 5),
        ("\x1bHello world.", "U+001B", 0),
        ("Hello world.\x7f", "U+007F", 12),
        ("Hello\x85world.", "U+0085", 5),  # a C1 control
        ("Hello \x0bworld.", "U+000B", 6),  # vertical tab: not one of the allowed whitespace
    ],
)
def test_control_characters_are_refused_before_the_engine(
    gateway: GatewayServer, reference: bytes, engine_v2: EngineProcess, text: str, character: str, position: int
) -> None:
    """Break: drop the control-character check from check_text → the engine gets the text (NUL: 422
    engine_rejected from the engine; the others: 200)."""
    before = engine_stats(engine_v2.url)["requests"]
    body = {"text": text, "text_language": "en", "prompt_language": "en", "prompt_text": "",
            "reference_audio_base64": base64.b64encode(reference).decode()}
    # json.dumps escapes every control character (`\\u0000`), as JSON clients send them
    response = httpx.post(f"{gateway.url}/v1/voice-clone", content=json.dumps(body),
                          headers={"Content-Type": "application/json"}, timeout=60)
    error = assert_error(response, 422, "invalid_text", contains=f"{character} at position {position}")
    assert (error["character"], error["position"]) == (character, position)
    assert engine_stats(engine_v2.url)["requests"] == before, "the text reached the engine"


def test_multipart_text_with_a_nul_is_refused(
    gateway: GatewayServer, reference: bytes, engine_v2: EngineProcess
) -> None:
    before = engine_stats(engine_v2.url)["requests"]
    assert_error(clone(gateway.url, reference, text="Hello\x00world."), 422, "invalid_text", contains="U+0000")
    assert engine_stats(engine_v2.url)["requests"] == before


def test_speech_route_refuses_a_nul_too(gateway: GatewayServer, engine_v2: EngineProcess) -> None:
    before = engine_stats(engine_v2.url)["requests"]
    response = httpx.post(f"{gateway.url}/v1/audio/speech", json={"input": "Hi\x00there", "voice": "none"}, timeout=30)
    assert_error(response, 422, "invalid_text", contains="U+0000")
    assert engine_stats(engine_v2.url)["requests"] == before


def test_tabs_and_line_breaks_are_fine(gateway: GatewayServer, reference: bytes) -> None:
    response = clone(gateway.url, reference, text="Hello\tworld.\r\nA second line.\nA third.")
    assert response.status_code == 200, response.text
    samples, rate = decode_wav(base64.b64decode(response.json()["output_audio_base64"]))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=1.0, max_seconds=20.0)
