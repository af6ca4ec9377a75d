"""Settings parsing (GATEWAY_* variables) and `sovits-gateway serve` flags over them.

The parsing rules are checked on `Settings` itself, then once more on a started `serve` subprocess whose
environment says one thing and whose flags say another, with a real CPU engine behind it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from gateway.settings import ModelWeights, Settings
from tests.gateway_support import clone
from tests.support import (
    EngineProcess,
    assert_error,
    engine_stats,
    free_port,
    make_reference,
    running_engine,
    wait_until,
)

_REPO_ROOT = Path(__file__).resolve().parent.parent


def settings_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Settings as the gateway builds them from GATEWAY_* variables alone (no .env file)."""
    for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(f"GATEWAY_{name.upper()}", value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


# ------------------------------------------------------------------------------------- parsing rules


def test_engines_tolerate_spaces_trailing_slashes_and_empty_items(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(monkeypatch, engines="  http://10.0.0.1:9880/ ,http://10.0.0.2:9880//,  , ")
    assert settings.engines == ["http://10.0.0.1:9880", "http://10.0.0.2:9880"]
    assert settings_from_env(monkeypatch, engines="http://gpu:9880").engines == ["http://gpu:9880"]


def test_models_are_a_json_map_of_weight_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    models = {"alice": {"gpt": "/m/a.ckpt", "sovits": "/m/a.pth"}, "bob": {"sovits": "/m/b.pth"}}
    settings = settings_from_env(monkeypatch, models=json.dumps(models))
    assert settings.models == {
        "alice": ModelWeights(gpt="/m/a.ckpt", sovits="/m/a.pth"),
        "bob": ModelWeights(gpt=None, sovits="/m/b.pth"),
    }
    # `.env.example` ships `GATEWAY_MODELS={}`; an emptied value means "no models", not a start-up crash
    assert settings_from_env(monkeypatch, models="").models == {}
    assert settings_from_env(monkeypatch, models="  ").models == {}
    # a typo must stop start-up, not leave the gateway running with no models
    with pytest.raises(ValidationError, match="models"):
        settings_from_env(monkeypatch, models='{"alice": {"gpt": "/m/a.ckpt",}')


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_engine_shared_dir_is_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    settings = settings_from_env(monkeypatch, shared_dir=str(tmp_path), engine_shared_dir=value)
    assert settings.engine_shared_dir is None
    assert settings.engine_dir == tmp_path
    reference = tmp_path / "refs" / "abc.wav"
    assert settings.to_engine_path(reference) == str(reference)  # the gateway's own absolute path


def test_engine_shared_dir_translates_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = settings_from_env(monkeypatch, shared_dir=str(tmp_path), engine_shared_dir="/shared")
    assert settings.to_engine_path(tmp_path / "refs" / "abc.wav") == "/shared/refs/abc.wav"


# --------------------------------------------------------------------- a started `serve` subprocess


@dataclass
class Served:
    url: str
    engine: EngineProcess
    shared_dir: Path
    port: int
    env_port: int
    weights: ModelWeights


#: GATEWAY_HOST, with no --host flag: a loopback address other than the default 127.0.0.1
ENV_HOST = "127.0.0.2"


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`python -m gateway serve` with flags that contradict its GATEWAY_* environment."""
    root = tmp_path_factory.mktemp("serve")
    weights = ModelWeights(gpt=str(root / "alice-e15.ckpt"), sovits=str(root / "alice_e8_s200.pth"))
    for path in (weights.gpt, weights.sovits):
        Path(str(path)).write_bytes(b"weights")
    port, env_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "PYTHONPATH": str(_REPO_ROOT),  # this checkout's gateway, whatever the venv has installed
        "GATEWAY_HOST": ENV_HOST,
        "GATEWAY_PORT": str(env_port),
        "GATEWAY_ENGINES": "http://127.0.0.1:9",  # nothing listens there
        "GATEWAY_SHARED_DIR": str(root / "env-shared"),
        "GATEWAY_ENGINE_SHARED_DIR": "",
        "GATEWAY_MODELS": json.dumps({"alice": weights.model_dump()}),
        "GATEWAY_MAX_TEXT_CHARS": "100",  # no flag for it
        "GATEWAY_PROBE_INTERVAL": "0.5",
    }
    with running_engine("--debug-routes", flavor="v2") as engine:
        command = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--engines", f" {engine.url}/ , ",
                   "--shared-dir", str(root / "flag-shared"), "--log-level", "warning"]
        # cwd without a .env file, so only the environment above and the flags count
        proc = subprocess.Popen(command, env=env, cwd=root)
        listening = [f"http://{host}:{p}" for host in (ENV_HOST, "127.0.0.1") for p in (port, env_port)]
        try:
            # wherever it listens: the tests say which address was wrong
            wait_until(lambda: proc.poll() is not None or any(_answers(url) for url in listening), timeout=60)
            assert proc.poll() is None, f"serve exited with {proc.returncode}"
            yield Served(f"http://{ENV_HOST}:{port}", engine, root / "flag-shared", port, env_port, weights)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ready(served: Served) -> dict[str, object]:
    """/readyz once the engine behind --engines is in rotation (the probe finds it shortly after start)."""
    wait_until(lambda: httpx.get(f"{served.url}/readyz", timeout=10).status_code == 200)
    return dict(httpx.get(f"{served.url}/readyz", timeout=10).json())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_reference(tmp_path_factory.mktemp("ref") / "ref.wav", seconds=5.0).read_bytes()



def test_serve_flags_override_the_environment(served: Served) -> None:
    assert _answers(served.url), "not listening on --port"
    assert not _answers(f"http://{ENV_HOST}:{served.env_port}"), "listening on GATEWAY_PORT despite --port"
    body = httpx.get(f"{served.url}/readyz", params={"verbose": 1}, timeout=10).json()
    # --engines (with its spaces and trailing slash) replaced GATEWAY_ENGINES
    assert [engine["url"] for engine in body["engines"]] == [served.engine.url]
    assert body["shared_dir"]["path"] == str(served.shared_dir)
    assert (served.shared_dir / "refs").is_dir()
    assert ready(served)["ready"] is True


def test_unset_flags_leave_the_environment_in_force(served: Served) -> None:
    # no --host: GATEWAY_HOST holds, not the flag's documented default
    assert not _answers(f"http://127.0.0.1:{served.port}"), "listening on 127.0.0.1 despite GATEWAY_HOST"
    error = assert_error(clone(served.url, None, text="a" * 101), 422, "text_too_long", contains="the limit is 100")
    assert error["limit"] == 100


def test_a_configured_model_is_loaded_on_the_engine(served: Served, reference: bytes) -> None:
    # the reference is stored under --shared-dir and, with GATEWAY_ENGINE_SHARED_DIR empty, the engine is
    # sent that same absolute path (a relative "refs/..." would not open from the engine's directory)
    ready(served)
    response = clone(served.url, reference, model="alice")
    assert response.status_code == 200, response.text
    assert (served.shared_dir / "refs" / f"{response.json()['reference_id']}.wav").is_file()
    stats = engine_stats(served.engine.url)
    assert (stats["gpt_weights"], stats["sovits_weights"]) == (served.weights.gpt, served.weights.sovits)
    engines = ready(served)["engines"]
    assert isinstance(engines, list) and engines[0]["loaded_weights"] == served.weights.model_dump()


def test_a_model_not_in_gateway_models_is_refused(served: Served, reference: bytes) -> None:
    before = engine_stats(served.engine.url)["requests"]
    response = clone(served.url, reference, model="bob")
    error = assert_error(response, 422, "unknown_model", contains="model 'bob' is not configured; known models: alice")
    assert "engine" not in error
    assert engine_stats(served.engine.url)["requests"] == before  # refused before any engine call
