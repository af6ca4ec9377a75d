"""Run the gateway for tests: in-process on a real socket (uvicorn in a thread) or as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import REPO_ROOT, free_port

CLONE_TEXT = "The quick brown fox jumps over the lazy dog."


@dataclass
class GatewayServer:
    url: str
    settings: Settings
    app: Any


def fast_settings(shared_dir: Path, engines: list[str], **overrides: Any) -> Settings:
    """Settings for tests: short timeouts and probe interval so fault tests finish quickly."""
    values: dict[str, Any] = {
        "engines": engines,
        "shared_dir": shared_dir,
        "connect_timeout": 2.0,
        "read_timeout": 20.0,
        "probe_interval": 0.5,
        "cooldown_seconds": 1.0,
        "max_queue_wait": 20.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def running_gateway(settings: Settings) -> Iterator[GatewayServer]:
    """The real app under uvicorn on a free port, in a background thread (lifespan included)."""
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)
    try:
        yield GatewayServer(f"http://127.0.0.1:{port}", settings, app)
    finally:
        server.should_exit = True
        thread.join(15)


def clone(
    url: str, audio: bytes | None, *, headers: dict[str, str] | None = None, timeout: float = 60, **fields: str
) -> httpx.Response:
    """`POST {url}/v1/voice-clone` as multipart: CLONE_TEXT in English, `audio` as the reference file (none if
    None), no transcript; `fields` add or override form fields."""
    data = {"text": CLONE_TEXT, "text_language": "en", "prompt_text": "", "prompt_language": "en", **fields}
    files = {"audio": ("ref.wav", audio, "audio/wav")} if audio is not None else None
    return httpx.post(f"{url}/v1/voice-clone", data=data, files=files, headers=headers, timeout=timeout)


@dataclass
class GatewayProcess:
    url: str
    proc: subprocess.Popen[bytes]

    def peak_rss_kib(self) -> int:
        """VmHWM (peak resident set) of the gateway process, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("VmHWM not found")


@contextmanager
def gateway_process(
    env: dict[str, str], *, log_level: str = "warning", output: Path | None = None
) -> Iterator[GatewayProcess]:
    """`python -m gateway serve` as a subprocess (for memory measurements and CLI coverage); `output`: a file
    that receives its stdout and stderr (its logs)."""
    port = free_port()
    full_env = {**os.environ, **env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
    sink = output.open("wb") if output is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--log-level", log_level], env=full_env, cwd=REPO_ROOT,
        stdout=sink, stderr=subprocess.STDOUT if sink else None,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gateway process did not start")
            time.sleep(0.1)
        yield GatewayProcess(url, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if sink is not None:
            sink.close()
