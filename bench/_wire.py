"""A minimal keep-alive HTTP/1.1 client for benchmarks: pre-built request bytes, Content-Length answers.

httpx spends ~0.5 ms of client CPU per request and more on 400 KB bodies; at c=16 on this 2-core machine
that would starve the very processes being measured. Requests here are bytes built once; answers are
read with one header scan and exact-size body reads.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit


def post(url: str, path: str, body: bytes, content_type: str) -> bytes:
    host = urlsplit(url).netloc
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def post_json(url: str, path: str, payload: dict[str, Any]) -> bytes:
    return post(url, path, json.dumps(payload).encode(), "application/json")


def post_form(url: str, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> bytes:
    """multipart/form-data, as curl or httpx would send it."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    for name, (filename, data, ctype) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return post(url, path, b"".join(parts), f"multipart/form-data; boundary={boundary}")


def _parse_head(head: bytes) -> tuple[int, int]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value)
    raise RuntimeError(f"answer without Content-Length: {head[:300]!r}")


class Connection:
    """One blocking keep-alive connection (for sequential latency)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._sock = socket.create_connection((parts.hostname, parts.port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()

    def request(self, raw: bytes) -> tuple[int, bytes]:
        self._sock.sendall(raw)
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv()
        status, length = _parse_head(bytes(buffer[:end]))
        del buffer[: end + 4]
        while len(buffer) < length:
            buffer += self._recv()
        body = bytes(buffer[:length])
        del buffer[:length]
        return status, body

    def _recv(self) -> bytes:
        chunk = self._sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self._sock.close()


async def _async_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status, length = _parse_head(head[:-4])
    await reader.readexactly(length)
    return status


async def throughput(url: str, raw: bytes, *, concurrency: int, total: int) -> tuple[float, int]:
    """`total` requests over `concurrency` keep-alive connections; (requests per second, non-200 answers)."""
    parts = urlsplit(url)
    todo = iter(range(total))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 22)
        try:
            for _ in todo:
                if await _async_request(reader, writer, raw) != 200:
                    failures += 1
        finally:
            writer.close()

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (loop.time() - started), failures
