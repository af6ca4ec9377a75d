"""`sovits-gateway keys add|list|revoke` and `serve` as subprocesses: the key printed once and stored hashed,
a served gateway that takes new keys and drops revoked ones, SIGHUP reloads, and refusals to start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.auth_support import bearer
from tests.gateway_support import gateway_process
from tests.support import REPO_ROOT, free_port

_CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def keys_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "keys", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**_CLEAN_ENV, **(env or {})}, timeout=60)


def test_add_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "keys.txt"
    added = keys_cli("add", "ci-bot", "--file", str(path), "--rpm", "60", "--audio-seconds-per-day", "3600")
    assert added.returncode == 0, added.stderr
    raw = added.stdout.strip()
    assert re.fullmatch(r"sk-sovits-[A-Za-z0-9_-]{43}", raw), added.stdout
    assert "shown only this once" in added.stderr
    text = path.read_text()
    assert raw not in text and raw[10:] not in text
    assert re.search(r"^ci-bot sha256:[0-9a-f]{64} scope=synthesize rpm=60 audio_seconds_per_day=3600 created=\S+Z$",
                     text, re.M), text
    assert path.stat().st_mode & 0o077 == 0  # hashes are nobody else's business
    env = {"GATEWAY_API_KEYS_FILE": str(path)}
    admin = keys_cli("add", "ops", "--scope", "admin", env=env)
    assert admin.returncode == 0 and admin.stdout.strip() != raw
    listed = keys_cli("list", env=env)
    assert listed.returncode == 0
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0][:3] == ["ID", "SCOPE", "RPM"]
    assert rows[1][:5] == ["ci-bot", "synthesize", "60", "default", "3600"]
    assert rows[2][:5] == ["ops", "admin", "default", "default", "default"]
    assert raw not in listed.stdout and "sha256" not in listed.stdout
    duplicate = keys_cli("add", "ops", env=env)
    assert duplicate.returncode == 1 and "exists already" in duplicate.stderr
    bad = keys_cli("add", "../x", env=env)
    assert bad.returncode == 1 and "key id" in bad.stderr
    assert keys_cli("revoke", "ci-bot", env=env).returncode == 0
    assert "ci-bot" not in path.read_text() and "ops" in path.read_text()
    missing = keys_cli("revoke", "ci-bot", env=env)
    assert missing.returncode == 1 and "no key 'ci-bot'" in missing.stderr
    nofile = keys_cli("list")
    assert nofile.returncode == 1 and "GATEWAY_API_KEYS_FILE" in nofile.stderr


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                          env={**_CLEAN_ENV, "GATEWAY_SHARED_DIR": env.pop("shared"), **env})


def test_serve_refuses_to_start_open_on_a_public_address_or_with_a_broken_keys_file(tmp_path: Path) -> None:
    refused = _serve({"shared": str(tmp_path / "s"), "GATEWAY_HOST": "0.0.0.0"})
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0, refused.stderr  # one line, no traceback
    assert "refusing to start" in refused.stderr and "GATEWAY_ALLOW_OPEN" in refused.stderr
    broken = tmp_path / "keys.txt"
    broken.write_text("ops sha256:0123 scope=admin\n")
    bad_file = _serve({"shared": str(tmp_path / "s"), "GATEWAY_API_KEYS_FILE": str(broken)})
    assert bad_file.returncode == 1 and bad_file.stderr.strip().count("\n") == 0, bad_file.stderr
    assert f"{broken}:1" in bad_file.stderr


def test_a_served_gateway_takes_added_keys_drops_revoked_ones_and_reloads_on_sighup(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    env = {"GATEWAY_API_KEYS_FILE": str(path)}
    first = keys_cli("add", "first", env=env).stdout.strip()
    with gateway_process({**env, "GATEWAY_SHARED_DIR": str(tmp_path / "shared"),
                          "GATEWAY_ENGINES": "http://127.0.0.1:9"}) as gw:
        def status(raw: str) -> int:
            return httpx.get(f"{gw.url}/v1/models", headers=bearer(raw), timeout=10).status_code

        assert status(first) == 200 and status("sk-sovits-nope") == 401
        second = keys_cli("add", "second", env=env).stdout.strip()
        deadline = time.monotonic() + 5
        while status(second) != 200:  # the file's mtime is checked at most once a second
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert keys_cli("revoke", "first", env=env).returncode == 0
        deadline = time.monotonic() + 5
        while status(first) != 401:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # an edit the mtime check cannot see (same size, same inode, same mtime): only SIGHUP reloads it
        third = keys_cli("add", "third", "--file", str(tmp_path / "other.txt")).stdout.strip()
        third_hash = (tmp_path / "other.txt").read_text().split("third ", 1)[1].split()[0]
        st = path.stat()
        text = path.read_text()
        second_hash = text.split("second ", 1)[1].split()[0]
        with path.open("r+") as out:
            out.write(text.replace(second_hash, third_hash))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        time.sleep(1.2)
        assert status(third) == 401 and status(second) == 200
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        assert gw.proc.poll() is None, "SIGHUP killed the gateway"
        deadline = time.monotonic() + 5
        while status(third) != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status(second) == 401
