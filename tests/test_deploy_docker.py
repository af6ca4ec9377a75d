"""The deployment proven to start: build the gateway image with Debian's docker.io (FROM the base image
deploy/base-image.sh makes locally, since no registry can be reached here), start the compose `cpu` profile with
Debian's docker-compose, and clone a voice through it. Skipped only where dockerd cannot run.

First run on a fresh machine: ~3 min for the base image (debootstrap) + ~1.5 min of pip in the image; later runs
reuse both layers (the dependency layer changes only with pyproject.toml) and take about a minute.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import REPO_ROOT, decode_wav, free_port, make_reference, wait_until

COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
DOCKERD_PIDFILE = Path("/run/sovits-gateway-tests-dockerd.pid")


def _daemon_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def docker() -> Iterator[None]:
    """A docker daemon: the running one, else a dockerd started here (as root) and stopped afterwards."""
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        pytest.skip("docker or docker-compose is not installed (Debian: apt-get install docker.io docker-compose)")
    if _daemon_answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.skip("no docker daemon answers, and dockerd " + ("is not installed" if dockerd is None else
                                                                "can only be started by root here"))
    log = tempfile.NamedTemporaryFile(prefix="sovits-dockerd-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([dockerd, "--pidfile", str(DOCKERD_PIDFILE)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _daemon_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text(errors="replace")[-1500:]
                pytest.skip(f"dockerd could not start here (exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        Path(log.name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def base_image(docker: None) -> None:
    """The tag deploy/Dockerfile builds FROM; deploy/base-image.sh makes it once (it exits at once if present)."""
    if shutil.which("debootstrap") is None and not _has_base_image():
        pytest.fail("the base image is missing and debootstrap is not installed (apt-get install debootstrap)")
    result = subprocess.run(["sh", str(REPO_ROOT / "deploy" / "base-image.sh")], capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _has_base_image() -> bool:
    tag = next(line.split()[1] for line in (REPO_ROOT / "deploy/Dockerfile").read_text().splitlines()
               if line.startswith("FROM "))
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _run(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def _health(container: str) -> str:
    result = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container],
                            capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


@pytest.mark.timeout(1800)
def test_compose_cpu_profile_builds_starts_and_clones_a_voice(base_image: None, tmp_path: Path) -> None:
    port, key = free_port(), "sk-sovits-" + secrets.token_hex(24)
    env = {key_: value for key_, value in os.environ.items() if not key_.startswith("GATEWAY_")}
    # a key, as in production (the gateway refuses to listen on all interfaces without one); published on loopback
    env.update(SOVITS_GATEWAY_PUBLISH=f"127.0.0.1:{port}", GATEWAY_API_KEYS=key)
    compose = ["docker-compose", "-f", str(COMPOSE_FILE), "-p", f"sovits-test-{os.getpid()}", "--profile", "cpu"]

    started = time.monotonic()
    built = _run([*compose, "build"], env, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    build_seconds = time.monotonic() - started
    try:
        # `up` returns once the engine's healthcheck passed (depends_on: service_healthy) and the gateway started
        up = _run([*compose, "up", "-d"], env, timeout=300)
        assert up.returncode == 0, up.stderr
        gateway = _run([*compose, "ps", "-q", "gateway-cpu"], env, timeout=60).stdout.strip()
        # the image's HEALTHCHECK (/readyz) turns healthy
        wait_until(lambda: _health(gateway) == "healthy", timeout=120, interval=1.0)
        up_seconds = time.monotonic() - started - build_seconds

        for service in ("gateway-cpu", "cpu-engine"):  # non-root, both
            uid = _run([*compose, "exec", "-T", service, "id", "-u"], env, timeout=60).stdout.strip()
            assert uid == "10001", service

        reference = make_reference(tmp_path / "ref.wav", seconds=4.0).read_bytes()
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/voice-clone",
            files={"audio": ("ref.wav", reference, "audio/wav")},
            data={"text": "Hello from inside the container.", "text_language": "en"},
            headers={"Authorization": f"Bearer {key}"}, timeout=120,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        samples, rate = decode_wav(base64.b64decode(body["output_audio_base64"]))
        assert rate == 32000 and len(samples) / rate == pytest.approx(body["output_duration"], abs=0.01)
        assert len(samples) / rate > 1.0 and float((samples**2).mean()) ** 0.5 > 0.01

        # the doctor inside the gateway container: the engine reads /data/shared/refs/... written as /shared/refs/...
        doctor = _run([*compose, "exec", "-T", "gateway-cpu", "sovits-gateway", "check", "--json"], env, timeout=120)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        reads = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "e0 reads refs")
        assert reads["status"] == "pass" and "/data/shared/refs/" in reads["detail"]
        print(f"\ncompose cpu profile: build {build_seconds:.1f} s, up + healthy {up_seconds:.1f} s, "
              f"voice clone {body['processing_time']:.2f} s")
    except AssertionError:
        logs = _run([*compose, "logs", "--no-color", "--tail", "40"], env, timeout=60)
        print(logs.stdout[-6000:])
        raise
    finally:
        _run([*compose, "down", "-v", "--remove-orphans"], env, timeout=120)
