"""Helpers for the streaming tests: raw sockets that read slowly or not at all, the kernel's view of a
server's send queue, log capture across threads, and the gateway's own counters."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

# ~40 text segments: with the slow engine's 0.5 s per segment the stream would last 20 s and more
LONG = " ".join(f"Sentence number {n} is spoken here slowly." for n in range(40))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw_post(url: str, path: str, body: dict[str, Any], *, slow_reader: bool = False) -> socket.socket:
    """Send a JSON POST on a raw socket and return it unread. `slow_reader`: a tiny receive window and a
    tiny segment size, so the server's send queue fills after a few kB instead of megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if slow_reader:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect(("127.0.0.1", port_of(url)))
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")
    sock.sendall(head.encode() + data)
    return sock


def send_queue_bytes(server_port: int, client_port: int) -> int:
    """Bytes the server's socket to this client holds unsent (the tx_queue of /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return int(queues.split(":")[0], 16)
    return 0


def read_to_eof(sock: socket.socket, timeout: float = 30.0) -> bytes:
    sock.settimeout(timeout)
    received = bytearray()
    while chunk := sock.recv(65536):
        received.extend(chunk)
    return bytes(received)


class LogRecords(logging.Handler):
    """Collects the records of some loggers (from any thread, e.g. the gateway's uvicorn thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.records.append(record)


@contextmanager
def captured_logs(*names: str) -> Iterator[LogRecords]:
    handler = LogRecords()
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)


def requests_counted(gateway_url: str, route: str, status: int) -> float:
    """`gateway_requests_total{route, status}` from the gateway's /metrics (0 when absent)."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    pattern = rf'^gateway_requests_total\{{route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def cuts_counted(gateway_url: str, reason: str) -> float:
    """`gateway_stream_cuts_total{reason}` from the gateway's /metrics (0 when absent)."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    match = re.search(rf'^gateway_stream_cuts_total\{{reason="{reason}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def readyz(gateway_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{gateway_url}/readyz", timeout=10).json())
