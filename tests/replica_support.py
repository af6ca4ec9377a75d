"""Several gateway replicas for tests: subprocesses sharing one shared dir, one Redis and the same engines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

#: short leases so a dead replica's jobs and slots come back within a test
LEASE_SECONDS = "1.0"


def replica_env(redis_url: str, shared: Path, engines: list[str], **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_ENGINES": ",".join(engines),
        "GATEWAY_SHARED_DIR": str(shared),
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_LEASE_SECONDS": LEASE_SECONDS,
        "GATEWAY_PROBE_INTERVAL": "0.5",
        **extra,
    }


def sse_events(url: str, timeout: float = 60) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events stream, until it ends."""
    with httpx.stream("GET", url, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield event, json.loads(line.removeprefix("data: "))


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    """Poll `condition()` until it returns something truthy; returns it (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
