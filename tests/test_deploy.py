"""The deployment files as the tools read them: Debian's docker-compose validates and resolves the compose file,
`systemd-analyze verify` loads the units (and `security --offline` scores their sandbox). The image itself is built
and started in tests/test_deploy_docker.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # `make test` installs both from Debian; elsewhere say how, rather than skip silently
        package = "docker-compose" if "compose" in name else "systemd"
        pytest.fail(f"{name} is not installed (Debian: apt-get install {package}; `make test` does it)")
    return path


# ---------------------------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file resolved by docker-compose itself (anchors merged, variables at their defaults)."""
    command = [_tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=DEPLOY,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def test_compose_file_is_valid() -> None:
    result = subprocess.run([_tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """source → (target, read_only) for the named volumes of a service."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":") if isinstance(volume, str) else (
            volume["source"], volume["target"], "ro" if volume.get("read_only") else "rw")
        found[source] = (target, mode == ["ro"])
    return found


@pytest.mark.parametrize(("profile", "gateway", "engines"), [
    ("cpu", "gateway-cpu", ["cpu-engine"]),
    ("gpu", "gateway-gpu", ["engine-0", "engine-1"]),
])
def test_each_profile_shares_references_where_each_side_expects_them(
    compose: dict[str, Any], profile: str, gateway: str, engines: list[str]
) -> None:
    services = compose["services"]
    env = services[gateway]["environment"]
    assert services[gateway]["profiles"] == [profile]
    gateway_target, gateway_ro = _mounts(services[gateway])["shared"]
    assert (gateway_target, gateway_ro) == (env["GATEWAY_SHARED_DIR"], False)  # the gateway writes there
    assert set(env["GATEWAY_ENGINES"].split(",")) == {f"http://{name}:9880" for name in engines}
    for name in engines:
        engine = services[name]
        assert engine["profiles"] == [profile]
        # the same volume, read-only, at the path the gateway names files by
        assert _mounts(engine)["shared"] == (env["GATEWAY_ENGINE_SHARED_DIR"], True)
        assert services[gateway]["depends_on"][name] == {"condition": "service_healthy"}
        assert "9880" in " ".join(engine["healthcheck"]["test"])
        assert "ports" not in engine  # no auth, and /control kills it: never published
    assert services[gateway]["ports"]


# ---------------------------------------------------------------------------------------------- systemd


def _directives(unit: Path) -> dict[str, list[str]]:
    """Key → every value it is given (units may repeat a key), comments and sections dropped."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for `systemd-analyze --root`: the host's stock units, ours in /etc/systemd/system, and an empty
    executable wherever our units start a program (the programs are not installed on a CI machine)."""
    root = tmp_path_factory.mktemp("unit-root")
    stock = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(stock, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        for key, values in _directives(unit).items():
            for value in values if key.startswith("Exec") else ():
                program = root / value.lstrip("-+!@:").split()[0].lstrip("/")
                program.parent.mkdir(parents=True, exist_ok=True)
                program.write_text("#!/bin/sh\n")
                program.chmod(0o755)
    return root


def _unit_names() -> list[str]:
    return [unit.name.replace("@.", "@0.") for unit in UNITS]  # a template is verified as an instance


def test_systemd_units_verify(unit_root: Path) -> None:
    expected = {"sovits-gateway.service", "sovits-gateway-check.service", "sovits-engine@.service"}
    assert {u.name for u in UNITS} >= expected
    result = subprocess.run([_tool("systemd-analyze"), "verify", f"--root={unit_root}", *_unit_names()],
                            capture_output=True, text=True, timeout=120)
    # any warning (an unknown or misspelt key is only a warning) fails too
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr


@pytest.mark.parametrize("name", ["sovits-gateway.service", "sovits-gateway-check.service", "sovits-engine@.service"])
def test_units_are_hardened(name: str) -> None:
    units = {unit.name: _directives(unit) for unit in UNITS}
    unit = units[name]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": ""}.items():
        assert unit.get(key) == [value], f"{name}: {key}={unit.get(key)}"
    if unit["Type"] != ["oneshot"]:
        assert unit["Restart"] == ["on-failure"]
    env = dict(line.split("=", 1) for line in (DEPLOY / "systemd/sovits-gateway.env").read_text().splitlines()
               if re.match(r"^GATEWAY_\w+=", line))
    if name.startswith("sovits-gateway"):
        # the gateway may write the shared directory and nothing else
        assert unit["ReadWritePaths"] == [env["GATEWAY_SHARED_DIR"]]
        assert unit["User"] == ["sovits"] and unit["EnvironmentFile"] == ["/etc/sovits-gateway.env"]
    else:
        assert unit["ReadOnlyPaths"] == [env["GATEWAY_SHARED_DIR"]]
        assert unit["ReadWritePaths"] == ["/srv/sovits/engine-%i"]


@pytest.mark.parametrize(("name", "ceiling"), [("sovits-gateway.service", 2.0), ("sovits-engine@0.service", 3.8)])
def test_sandbox_exposure_scores(unit_root: Path, name: str, ceiling: float) -> None:
    """systemd's own sandbox score (0 = locked down, 10 = exposed). The engine needs the GPU devices, CUDA's
    writable+executable memory and unfiltered syscalls, so it scores higher than the gateway."""
    result = subprocess.run([_tool("systemd-analyze"), "security", "--offline=yes", f"--root={unit_root}", name],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"{name}: exposure {match.group(1)}")
    assert float(match.group(1)) <= ceiling
