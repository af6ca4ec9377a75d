"""`sovits-gateway check` as an operator runs it: a subprocess against real CPU engines (both flavours), real
directories; the exit code and every line are what a script or a container healthcheck sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_support import running_redis
from tests.support import REPO_ROOT, EngineProcess, decode_wav, free_port, running_engine


@pytest.fixture(scope="module")
def engine_v1() -> Iterator[EngineProcess]:
    with running_engine(flavor="v1") as engine:
        yield engine


def check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `sovits-gateway check` from a directory without a .env, with only the given GATEWAY_* variables."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", *args],
        env={**clean, "PYTHONPATH": str(REPO_ROOT), **env}, cwd=REPO_ROOT / "tests",
        capture_output=True, text=True, timeout=120,
    )


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """`{"e0 reads refs": "✗ e0 reads refs  the engine cannot ..."}`: each check's whole line by name."""
    found = {}
    for line in result.stdout.splitlines():
        for name in ("settings", "shared dir", "probe reference", "redis", "e0 engine", "e0 reads refs", "e1 engine",
                     "e1 reads refs"):
            if line[2:].startswith(name + " "):
                found[name] = line
    return found


def test_a_good_deployment_passes_every_check(
    engine_v2: EngineProcess, engine_v1: EngineProcess, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    result = check(GATEWAY_ENGINES=f"{engine_v2.url},{engine_v1.url}", GATEWAY_SHARED_DIR=str(shared))
    assert result.returncode == 0, result.stdout + result.stderr
    got = lines(result)
    assert len(got) == 7 and all(line.startswith("✓") for line in got.values()), result.stdout
    assert f"{engine_v2.url}: api_v2, model v2" in got["e0 engine"]
    assert f"{engine_v1.url}: api.py" in got["e1 engine"]
    assert "via /set_refer_audio" in got["e0 reads refs"] and "via a short synthesis (32000 Hz)" in got["e1 reads refs"]
    assert result.stdout.rstrip().endswith("all 7 checks passed")
    # the probe is a real reference in refs/, where the gateway keeps them: 3.5 s of voiced mono audio
    (probe,) = (shared / "refs").glob("*.wav")
    samples, rate = decode_wav(probe.read_bytes())
    assert samples.ndim == 1 and len(samples) / rate == pytest.approx(3.5, abs=0.01)
    assert float((samples**2).mean()) ** 0.5 > 0.05


def test_json_report_parses_with_the_engine_facts(engine_v2: EngineProcess, tmp_path: Path) -> None:
    result = check("--json", GATEWAY_ENGINES=engine_v2.url, GATEWAY_SHARED_DIR=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert names == ["settings", "shared dir", "probe reference", "e0 engine", "e0 reads refs"]
    assert {c["status"] for c in report["checks"]} == {"pass"}
    engine = report["checks"][3]["engine"]
    assert engine == {"id": "e0", "url": engine_v2.url, "flavor": "v2", "version": "v2"}
    assert report["checks"][4]["seconds"] > 0  # the probe's round trip is timed


def test_an_engine_that_is_down_fails_with_the_reason(engine_v2: EngineProcess, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = check("--json", GATEWAY_ENGINES=f"{engine_v2.url},{down}", GATEWAY_SHARED_DIR=str(tmp_path))
    assert result.returncode == 1
    by_name = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert by_name["e0 engine"]["status"] == "pass" and by_name["e0 reads refs"]["status"] == "pass"
    assert by_name["e1 engine"]["status"] == "fail"
    assert "refused the connection" in by_name["e1 engine"]["detail"] and down in by_name["e1 engine"]["detail"]
    assert by_name["e1 reads refs"]["status"] == "skip"
    human = check(GATEWAY_ENGINES=down, GATEWAY_SHARED_DIR=str(tmp_path))
    assert human.returncode == 1 and lines(human)["e0 engine"].startswith("✗ e0 engine")
    assert "1 of 5 checks failed, 1 skipped" in human.stdout


def test_an_engine_side_path_the_engines_cannot_read_fails_the_readability_check(
    engine_v2: EngineProcess, engine_v1: EngineProcess, tmp_path: Path
) -> None:
    # the classic mistake: the engines mount the shared volume elsewhere than GATEWAY_ENGINE_SHARED_DIR says
    result = check(GATEWAY_ENGINES=f"{engine_v2.url},{engine_v1.url}", GATEWAY_SHARED_DIR=str(tmp_path / "shared"),
                   GATEWAY_ENGINE_SHARED_DIR="/mnt/not-the-mount")
    assert result.returncode == 1
    got = lines(result)
    assert got["e0 engine"].startswith("✓") and got["e1 engine"].startswith("✓")  # reachable, yet useless
    for name in ("e0 reads refs", "e1 reads refs"):
        assert got[name].startswith(f"✗ {name}")
        assert "the engine cannot open /mnt/not-the-mount/refs/" in got[name]
        assert "GATEWAY_ENGINE_SHARED_DIR must be where this engine sees GATEWAY_SHARED_DIR" in got[name]
    assert "No such file or directory" in got["e0 reads refs"]  # api_v2 says why


def test_a_shared_dir_that_cannot_be_written_fails(engine_v2: EngineProcess, tmp_path: Path) -> None:
    # a path under a regular file: not writable even for root (the tests may run as root, where chmod is no bar)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = check(GATEWAY_ENGINES=engine_v2.url, GATEWAY_SHARED_DIR=str(blocker / "shared"))
    assert result.returncode == 1
    got = lines(result)
    assert got["shared dir"].startswith("✗ shared dir") and "is not writable" in got["shared dir"]
    assert "Not a directory" in got["shared dir"]
    assert got["probe reference"].startswith("- ") and got["e0 reads refs"].startswith("- ")
    assert got["e0 engine"].startswith("✓")


def test_settings_that_do_not_parse_are_named_by_their_variable(tmp_path: Path) -> None:
    result = check(GATEWAY_PORT="eighty", GATEWAY_MAX_ATTEMPTS="0", GATEWAY_SHARED_DIR=str(tmp_path))
    assert result.returncode == 1
    (line,) = lines(result).values()
    assert line.startswith("✗ settings")
    assert "GATEWAY_PORT: Input should be a valid integer" in line and "(got 'eighty')" in line
    assert "GATEWAY_MAX_ATTEMPTS: Input should be greater than or equal to 1" in line
    assert "Traceback" not in result.stdout + result.stderr


def test_with_redis_configured_it_checks_that_redis_answers_and_runs_scripts(
    engine_v2: EngineProcess, tmp_path: Path
) -> None:
    with running_redis() as redis:
        result = check(GATEWAY_ENGINES=engine_v2.url, GATEWAY_SHARED_DIR=str(tmp_path), GATEWAY_REDIS_URL=redis.url)
    assert result.returncode == 0, result.stdout + result.stderr
    line = lines(result)["redis"]
    assert line.startswith("✓") and "Redis 7." in line and "scripts run" in line, line
    gone = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    result = check(GATEWAY_ENGINES=engine_v2.url, GATEWAY_SHARED_DIR=str(tmp_path), GATEWAY_REDIS_URL=gone)
    assert result.returncode == 1
    line = lines(result)["redis"]
    assert line.startswith("✗") and "does not answer" in line and "user:***@" in line, line
    assert "s3cret" not in result.stdout
