"""Fault injection of the CPU engine: every fault as a client sees it on the wire."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import (
    EngineProcess,
    assert_speech,
    decode_wav,
    engine_stats,
    read_until_abort,
    running_engine,
    set_engine_faults,
    tts_params,
    wait_until,
)

SHORT = "Hi there."


@pytest.fixture(scope="module")
def faulty() -> Iterator[EngineProcess]:
    """One engine whose faults each test sets at run time through `POST /_faults`."""
    with running_engine("--debug-routes") as engine:
        yield engine


@pytest.fixture
def engine(faulty: EngineProcess) -> Iterator[EngineProcess]:
    yield faulty
    set_engine_faults(faulty.url, fault=None, delay=0.0, fault_after=0)
    wait_until(lambda: engine_stats(faulty.url)["in_flight"] == 0)


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send one HTTP/1.1 request on a keep-alive socket and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


# --- start-up flags -----------------------------------------------------------------------------------


def test_fault_500_after_healthy_requests(ref: Path) -> None:
    with running_engine("--debug-routes", "--fault", "500", "--fault-after", "1") as engine:
        # Requests that fail validation are not synthesis requests: they neither count nor get the fault.
        probe = httpx.get(f"{engine.url}/tts", params={"text_lang": "zh", "prompt_lang": "zh"})
        assert probe.json() == {"message": "ref_audio_path is required"}
        healthy = httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60)
        assert_speech(*decode_wav(healthy.content), expected_rate=32000, min_seconds=0.3, max_seconds=4.0)
        body = f'{{"text": "{SHORT}", "text_lang": "en", "ref_audio_path": "{ref}", "prompt_lang": "en"}}'.encode()
        request = (b"POST /tts HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        for _ in range(2):  # the fault stays on; each time the server closes the connection after the 500
            head, _, text = raw_exchange(engine.port, request).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 500") and b"text/plain" in head
            assert text == b"Internal Server Error"
        assert engine_stats(engine.url)["requests"] == 4


def test_exit_after_crashes_without_answering_and_restart_recovers(ref: Path) -> None:
    with running_engine("--exit-after", "1") as engine:
        assert httpx.get(f"{engine.url}/_stats").status_code == 404  # no --debug-routes, no debug routes
        assert httpx.post(f"{engine.url}/_faults", json={"fault": None}).status_code == 404
        assert httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60).status_code == 200
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60)
        assert engine.proc.wait(timeout=10) == 70
        engine.restart()
        again = httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60)
        assert_speech(*decode_wav(again.content), expected_rate=32000, min_seconds=0.3, max_seconds=4.0)


def test_silence_fault_from_the_command_line(ref: Path) -> None:
    with running_engine("--fault", "silence") as engine:
        response = httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60)
    assert response.status_code == 200
    samples, rate = decode_wav(response.content)
    assert (rate, samples.ndim, len(samples), float(np.abs(samples).max())) == (16000, 1, 16000, 0.0)


# --- run-time faults ----------------------------------------------------------------------------------


def test_silence_in_streaming_is_a_silent_chunk_then_an_abort(engine: EngineProcess, ref: Path) -> None:
    set_engine_faults(engine.url, fault="silence")
    response, received = read_until_abort("POST", f"{engine.url}/tts", json=tts_params(ref, SHORT, streaming_mode=1))
    assert response.status_code == 200
    assert received[:4] == b"RIFF" and int.from_bytes(received[24:28], "little") == 16000
    assert received[44:] == bytes(32000)


def test_truncate_mode0_sends_a_full_content_length_and_half_the_body(engine: EngineProcess, ref: Path) -> None:
    set_engine_faults(engine.url, fault="truncate")
    response, received = read_until_abort("POST", f"{engine.url}/tts", json=tts_params(ref, SHORT))
    assert response.status_code == 200
    declared = int(response.headers["content-length"])
    assert 0 < len(received) < declared
    assert received[:4] == b"RIFF"


def test_truncate_streaming_sends_audio_then_aborts(engine: EngineProcess, ref: Path) -> None:
    set_engine_faults(engine.url, fault="truncate")
    body = tts_params(ref, text="One sentence. Another sentence.", streaming_mode=1)
    response, received = read_until_abort("POST", f"{engine.url}/tts", json=body)
    assert response.status_code == 200
    assert received[:4] == b"RIFF" and len(received) > 44 + 3200


def test_runtime_500_and_fault_after(engine: EngineProcess, ref: Path) -> None:
    set_engine_faults(engine.url, fault="500", fault_after=1)
    assert httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60).status_code == 200
    failed = httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60)
    assert (failed.status_code, failed.text) == (500, "Internal Server Error")
    set_engine_faults(engine.url, fault=None)
    assert httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60).status_code == 200


def test_delay_is_added_to_every_synthesis(engine: EngineProcess, ref: Path) -> None:
    snapshot = set_engine_faults(engine.url, delay=1.0)
    assert snapshot["delay"] == 1.0 and snapshot["fault"] is None
    started = time.monotonic()
    response = httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60)
    assert time.monotonic() - started >= 1.0  # a lower bound only: the delay is a sleep inside the engine
    assert_speech(*decode_wav(response.content), expected_rate=32000, min_seconds=0.3, max_seconds=4.0)


def test_hang_never_answers_and_holds_the_engine_until_the_client_leaves(engine: EngineProcess, ref: Path) -> None:
    set_engine_faults(engine.url, fault="hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=httpx.Timeout(60, read=1.5))
    wait_until(lambda: engine_stats(engine.url)["in_flight"] == 0)  # the client left, so the engine let the request go

    # A hung request keeps the engine: a second request (no fault for it) waits until the first client leaves.
    body = f'{{"text": "{SHORT}", "text_lang": "en", "ref_audio_path": "{ref}", "prompt_lang": "en"}}'.encode()
    hung = socket.create_connection(("127.0.0.1", engine.port), timeout=30)
    hung.sendall(b"POST /tts HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    wait_until(lambda: engine_stats(engine.url)["in_flight"] == 1)
    set_engine_faults(engine.url, fault=None)
    result: dict[str, httpx.Response] = {}
    waiter = threading.Thread(
        target=lambda: result.setdefault("r", httpx.post(f"{engine.url}/tts", json=tts_params(ref, SHORT), timeout=60)))
    waiter.start()
    wait_until(lambda: engine_stats(engine.url)["in_flight"] == 2)
    waiter.join(timeout=2.0)
    assert waiter.is_alive(), "the second request ran while the hung one still held the engine"
    hung.close()
    waiter.join(timeout=60)
    assert result["r"].status_code == 200
    assert engine_stats(engine.url)["max_in_flight"] >= 2


def test_faults_route_validates_its_input(engine: EngineProcess) -> None:
    response = httpx.post(f"{engine.url}/_faults", json={"fault": "explode"})
    assert response.status_code == 422
    assert httpx.post(f"{engine.url}/_faults", json={"delay": -1}).status_code == 422


def test_validation_errors_are_never_faulted(engine: EngineProcess) -> None:
    set_engine_faults(engine.url, fault="500")
    response = httpx.get(f"{engine.url}/tts", params={"text_lang": "zh", "prompt_lang": "zh"})
    assert (response.status_code, response.json()) == (400, {"message": "ref_audio_path is required"})
