"""Fast units for how engine error answers are classified (protocol_v1/v2.classify_error) and what that
means for the engine's health (health.judge): an answer that blames the request never counts against the
engine (issue 9, item 8). The bodies are the engines' exact ones (engine-protocol.md §3.5)."""

from __future__ import annotations

import json

import pytest

from gateway.engine import protocol_v1, protocol_v2
from gateway.engine.health import judge
from gateway.errors import EngineBadResponse, EngineError, EngineRejected

URL = "http://e"


def v2_body(message: str, exception: str | None = None) -> bytes:
    body: dict[str, str] = {"message": message}
    if exception is not None:
        body["Exception"] = exception
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind", "code", "verdict"),
    [
        # the request's fault: 422 to the client, never counted
        (400, v2_body("tts failed", "embedded null character"), EngineRejected, "engine_rejected", "refused"),
        (400, v2_body("tts failed", "list index out of range"), EngineRejected, "engine_rejected", "refused"),
        (400, v2_body("tts failed", ""), EngineRejected, "engine_rejected", "refused"),  # bare assertion
        (400, v2_body("tts failed", "Reference audio is outside the 3-10 second range, please choose another one!"),
         EngineRejected, "reference_duration", "refused"),
        (400, v2_body("text_lang: xx is not supported in version v2"), EngineRejected, "engine_rejected", "refused"),
        (400, v2_body("text is required"), EngineRejected, "engine_rejected", "refused"),
        (422, b'{"detail":[{"type":"int_parsing","loc":["body","top_k"],"msg":"x","input":"a"}]}',
         EngineRejected, "engine_rejected", "refused"),
        # the engine's (or its deployment's) fault: 502, counted, failed over
        (400, v2_body("tts failed", "/shared/refs/a.wav not exists"), EngineBadResponse,
         "engine_cannot_read_reference", "failed"),
        (500, b"Internal Server Error", EngineBadResponse, "engine_bad_response", "failed"),
        (404, b'{"detail":"Not Found"}', EngineBadResponse, "engine_bad_response", "failed"),
    ],
)
def test_v2_classification_and_its_verdict(
    status: int, body: bytes, kind: type[EngineError], code: str, verdict: str
) -> None:
    error = protocol_v2.classify_error(status, body, URL)
    assert type(error) is kind and error.code == code and error.engine == URL
    assert judge(error) == verdict


def test_v2_text_refusal_carries_the_engines_words() -> None:
    error = protocol_v2.classify_error(400, v2_body("tts failed", "embedded null character"), URL)
    assert error.status == 422 and not error.retryable and error.retry_after is None
    assert error.message == f"engine {URL} could not synthesize this request: embedded null character"
    assert error.extra["engine_message"] == "embedded null character"


@pytest.mark.parametrize(
    ("status", "kind", "verdict"),
    [(400, EngineRejected, "refused"), (422, EngineRejected, "refused"), (500, EngineBadResponse, "failed"),
     (404, EngineBadResponse, "failed")],
)
def test_v1_any_other_4xx_is_the_requests_fault(status: int, kind: type[EngineError], verdict: str) -> None:
    error = protocol_v1.classify_error(status, b'{"code": 400, "message": "bad text"}', URL)
    assert type(error) is kind and judge(error) == verdict


def test_an_engine_that_cannot_open_the_reference_names_no_path_to_the_client() -> None:
    error = protocol_v2.classify_error(400, v2_body("tts failed", "/shared/refs/a.wav not exists"), URL)
    assert "/shared/refs" not in error.message and "GATEWAY_ENGINE_SHARED_DIR" in error.message
    assert "/shared/refs" not in str(error.extra)
