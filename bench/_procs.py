"""Start CPU engines and the gateway as subprocesses for benchmarks (bounded, loopback only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


@dataclass(frozen=True)
class Started:
    url: str
    pid: int


@contextmanager
def engine_process(*args: str) -> Iterator[Started]:
    """A v2 CPU engine (extra `args`, e.g. "--instant") on a free port; its url and pid."""
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cpu_engine", "--flavor", "v2", "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}"
    with process(cmd, f"{url}/openapi.json") as proc:
        yield Started(url, proc.pid)


@contextmanager
def engine(*args: str) -> Iterator[str]:
    with engine_process(*args) as started:
        yield started.url


@contextmanager
def gateway_process(engines: list[str], shared_dir: Path, **env: str) -> Iterator[Started]:
    """`python -m gateway serve` (one process: its pid is the gateway's) with GATEWAY_* `env` on a free port."""
    port = free_port()
    settings = {"GATEWAY_ENGINES": ",".join(engines), "GATEWAY_SHARED_DIR": str(shared_dir),
                "GATEWAY_PORT": str(port), "GATEWAY_LOG_LEVEL": "warning", **env}
    url = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "gateway", "serve"], f"{url}/healthz", settings) as proc:
        yield Started(url, proc.pid)


@contextmanager
def gateway(engines: list[str], shared_dir: Path, **env: str) -> Iterator[str]:
    with gateway_process(engines, shared_dir, **env) as started:
        yield started.url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
