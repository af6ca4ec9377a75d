"""Slow and idle connections against `sovits-gateway serve` (a subprocess: these are server settings, see
gateway/server.py), over raw sockets: an idle connection, headers sent a byte at a time and a body trickled at
10 bytes/s are all closed on time; a fair client is not; connections past GATEWAY_MAX_CONNECTIONS get a 503."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_support import GatewayProcess, gateway_process
from tests.support import EngineProcess

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MIN_BODY_RATE = 1000  # bytes/s
MAX_CONNECTIONS = 12


def env(engine: EngineProcess, shared: Path, **extra: str) -> dict[str, str]:
    return {"GATEWAY_ENGINES": engine.url, "GATEWAY_SHARED_DIR": str(shared), **extra}


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    limits = {"GATEWAY_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "GATEWAY_BODY_TIMEOUT": str(BODY_TIMEOUT),
              "GATEWAY_MIN_BODY_RATE": str(MIN_BODY_RATE)}
    with gateway_process(env(engine_v2, tmp_path_factory.mktemp("shared"), **limits)) as gw:
        yield gw


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def seconds_until_closed(sock: socket.socket, trickle: bytes = b"", interval: float = 0.1,
                         limit: float = 10.0) -> float:
    """Send `trickle` one byte per `interval` (or nothing) until the server closes; the seconds that took."""
    started = time.monotonic()
    sock.settimeout(interval)
    sent = 0
    while time.monotonic() - started < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if trickle:
            try:
                sock.sendall(trickle[sent % len(trickle):][:1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
            sent += 1
    raise AssertionError(f"the connection was still open after {limit} s")


def test_idle_connection_is_closed_after_the_header_timeout(gateway: GatewayProcess) -> None:
    with connect(gateway.url) as sock:
        assert HEADER_TIMEOUT * 0.8 < seconds_until_closed(sock) < HEADER_TIMEOUT + 2


def test_headers_sent_a_byte_at_a_time_are_cut_at_the_header_timeout(gateway: GatewayProcess) -> None:
    """Every byte resets no timer: the headers must be complete HEADER_TIMEOUT after the connection opened."""
    with connect(gateway.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        assert HEADER_TIMEOUT * 0.8 < seconds_until_closed(sock, b"X-Slow: " + b"a" * 200) < HEADER_TIMEOUT + 2


def test_the_next_request_on_a_keep_alive_connection_gets_the_same_header_timeout(gateway: GatewayProcess) -> None:
    with connect(gateway.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # then nothing: not kept for ever by the keep-alive
        assert seconds_until_closed(sock) < HEADER_TIMEOUT + 2


def test_body_trickled_at_10_bytes_a_second_is_cut(gateway: GatewayProcess) -> None:
    with connect(gateway.url) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        elapsed = seconds_until_closed(sock, b'{"input": "' + b"a" * 1000)
        assert BODY_TIMEOUT * 0.8 < elapsed < BODY_TIMEOUT + 2
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200  # the server itself is fine


def test_body_that_stops_is_cut_after_the_body_timeout(gateway: GatewayProcess) -> None:
    with connect(gateway.url) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"input": "')
        assert BODY_TIMEOUT * 0.8 < seconds_until_closed(sock) < BODY_TIMEOUT + 2


def test_a_fair_slow_upload_is_answered(gateway: GatewayProcess) -> None:
    """Chunks with pauses under BODY_TIMEOUT at well over MIN_BODY_RATE: read whole and answered (a 4xx about
    the text, which proves the body arrived), over 2.5 s in all: longer than either timeout."""
    body = json.dumps({"input": "a" * 20_000, "voice": "nobody"}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4000):
            time.sleep(0.5)
            yield body[start:start + 4000]

    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/v1/audio/speech", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=30)
    assert time.monotonic() - started > HEADER_TIMEOUT + BODY_TIMEOUT
    assert response.status_code == 422 and response.json()["error"]["code"] == "text_too_long", response.text


def test_headers_past_64_kib_are_refused(gateway: GatewayProcess) -> None:
    """Well inside the header timeout: a header line that never ends is not buffered without limit."""
    with connect(gateway.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Big: " + b"a" * 100_000)
        started = time.monotonic()
        assert sock.recv(65536).startswith(b"HTTP/1.1 431")
        assert time.monotonic() - started < HEADER_TIMEOUT * 0.8


def test_connections_past_the_cap_get_503_and_the_cap_frees_up(engine_v2: EngineProcess, tmp_path: Path) -> None:
    limits = {"GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "GATEWAY_HEADER_TIMEOUT": "30"}
    with gateway_process(env(engine_v2, tmp_path, **limits)) as gw:
        idle = [connect(gw.url) for _ in range(MAX_CONNECTIONS)]
        try:
            time.sleep(0.3)  # let the server accept them all
            with connect(gw.url) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
                extra.settimeout(10)
                answer = b""
                while chunk := extra.recv(65536):
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower(), answer
            assert json.loads(body)["error"]["code"] == "too_many_connections"
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        assert httpx.get(f"{gw.url}/healthz", timeout=10).status_code == 200
