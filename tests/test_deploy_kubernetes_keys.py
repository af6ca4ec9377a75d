"""The keys Secret of deploy/kubernetes as the kubelet updates it: a running gateway picks up a new keys file and
drops a revoked key with no restart. The kubelet never rewrites the file a Secret volume shows: `keys` is a symlink
to `..data/keys`, and an update writes a new timestamped directory and renames a new `..data` symlink over the old
one (Kubernetes' AtomicWriter). Only a check that follows the symlink sees the change."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.auth_support import bearer, write_keys
from tests.gateway_support import fast_settings, running_gateway


def _publish(volume: Path, generation: int, entries: dict[str, tuple[str, dict[str, float]]]) -> dict[str, str]:
    """Write the keys as the kubelet writes a Secret volume (first publication or an update); the raw keys."""
    payload = volume / f"..2026_11_30_12_00_0{generation}.{generation:09d}"
    payload.mkdir()
    raws = write_keys(payload / "keys", entries)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    os.symlink(payload.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")  # the atomic swap
    if not (volume / "keys").is_symlink():
        os.symlink("..data/keys", volume / "keys")
    if old is not None:
        for file in (volume / old).iterdir():
            file.unlink()
        (volume / old).rmdir()
    return raws


def _status(url: str, raw: str) -> int:
    return httpx.get(f"{url}/v1/models", headers=bearer(raw), timeout=10).status_code


def test_a_secret_volume_update_reaches_a_running_gateway(tmp_path: Path) -> None:
    volume = tmp_path / "etc-sovits-gateway"
    volume.mkdir()
    first = _publish(volume, 1, {"ops": ("admin", {}), "old-app": ("synthesize", {})})
    settings = fast_settings(tmp_path / "shared", ["http://127.0.0.1:9"], host="0.0.0.0", api_keys_file=volume / "keys")
    with running_gateway(settings) as gw:
        assert _status(gw.url, first["old-app"]) == 200
        second = _publish(volume, 2, {"ops": ("admin", {}), "new-app": ("synthesize", {})})
        deadline = time.monotonic() + 5
        while _status(gw.url, second["new-app"]) != 200:
            assert time.monotonic() < deadline, "the key added to the Secret was not picked up"
            time.sleep(0.1)
        assert _status(gw.url, first["old-app"]) == 401  # revoked with the same update
