"""Start CPU engines and the gateway as subprocesses for benchmarks (bounded, loopback only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@contextmanager
def process(cmd: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    try:
        _wait(ready_url, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def engine(*args: str) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cpu_engine", "--flavor", "v2", "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}"
    with process(cmd, f"{url}/openapi.json"):
        yield url


@contextmanager
def gateway(engines: list[str], shared_dir: Path, **env: str) -> Iterator[str]:
    port = free_port()
    settings = {"GATEWAY_ENGINES": ",".join(engines), "GATEWAY_SHARED_DIR": str(shared_dir),
                "GATEWAY_PORT": str(port), "GATEWAY_LOG_LEVEL": "warning", **env}
    url = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "gateway", "serve"], f"{url}/healthz", settings):
        yield url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
