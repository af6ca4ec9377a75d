"""`sovits-gateway stack` (what `make run` starts): both processes come up, and a SIGTERM stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import REPO_ROOT, free_port, wait_until


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_stack_serves_and_sigterm_stops_the_engine_too(tmp_path: Path) -> None:
    port, engine_port = free_port(), free_port()
    # run from tmp_path, yet import this checkout's gateway (not whichever one the venv was installed from)
    env = {**os.environ, "GATEWAY_SHARED_DIR": str(tmp_path / "shared"), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "stack", "--port", str(port), "--engine-port", str(engine_port),
         "--log-level", "warning"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/readyz"), timeout=60)
        assert _answers(f"http://127.0.0.1:{engine_port}/openapi.json")
        proc.send_signal(signal.SIGTERM)  # what docker stop and systemd send
        assert proc.wait(30) == 0  # a clean stop, not death by the signal (-15) or an error
        wait_until(lambda: not _answers(f"http://127.0.0.1:{engine_port}/openapi.json"), timeout=15)
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert f"http://127.0.0.1:{engine_port}" in output and str(tmp_path / "shared") in output
    finally:
        if proc.poll() is None:
            proc.kill()
