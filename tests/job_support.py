"""Helpers for dubbing-job tests: a voice in the library, submit a job, wait for it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.support import make_reference


def create_voice(url: str, tmp: Path, name: str = "narrator", f0: float = 120.0) -> str:
    reference = make_reference(tmp / f"{name}.wav", seconds=4.0, f0=f0).read_bytes()
    created = httpx.post(
        f"{url}/v1/voices",
        data={"name": name, "prompt_text": "A reference recording.", "prompt_language": "en"},
        files={"audio": ("ref.wav", reference, "audio/wav")},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    voice_id: str = created.json()["id"]
    return voice_id


def lines(count: int, prefix: str = "Line") -> list[dict[str, Any]]:
    return [{"text": f"{prefix} number {i + 1} is spoken here.", "language": "en"} for i in range(count)]


def submit(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json=body, headers=headers, timeout=120)


def job(url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def wait_for_job(url: str, job_id: str, timeout: float = 240, statuses: tuple[str, ...] = ("done", "failed",
                 "cancelled")) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = job(url, job_id)
        if current["status"] in statuses:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {current['status']}: {current['progress']}")
        time.sleep(0.1)


def wait_for_done_segments(url: str, job_id: str, count: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = job(url, job_id)
        if current["progress"]["done"] >= count:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id}: {current['progress']}")
        time.sleep(0.05)
