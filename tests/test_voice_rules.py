"""Voice-library rules that only a dying or failing writer shows: old files survive, names come back.

Writers run as real subprocesses under `RLIMIT_FSIZE`, so a write really fails (EFBIG) or the process
really dies (SIGXFSZ) in the middle of a file, the way a full disk or a crash would do it.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway.audio.intake import PreparedReference, prepare_reference
from gateway.voices import VoiceStore
from gateway.voices.files import STALE_TEMP_SECONDS
from tests.gateway_support import fast_settings, running_gateway
from tests.support import assert_error, free_port, make_reference, wait_until

VOICE_NOT_SAVED = ("the gateway cannot save the voice right now (its shared directory is not writable); "
                   "try again later")
DEFAULT_NOT_SAVED = ("the gateway cannot save the default voice right now (its shared directory is not "
                     "writable); try again later")

REPO_ROOT = Path(__file__).resolve().parent.parent
NO_ENGINE = "http://127.0.0.1:9"  # the voice library needs no engine

# Child process: rewrite one voice file through the real write function, with a file-size limit set
# after start-up. Python ignores SIGXFSZ (so a write past the limit fails with EFBIG) unless told to die.
_WRITER = """
import errno, resource, signal, sys
from pathlib import Path
from gateway.voices.files import write_atomic
path, data_file, limit, mode = sys.argv[1:]
data = Path(data_file).read_bytes()
if mode == "killed":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
try:
    write_atomic(Path(path), data)
except OSError as exc:
    print("EFBIG" if exc.errno == errno.EFBIG else repr(exc), flush=True)
    sys.exit(3)
print("written", flush=True)
"""


def prepared(path: Path, f0: float = 150.0) -> PreparedReference:
    return prepare_reference(make_reference(path, seconds=4.0, f0=f0).read_bytes())


def run_writer(target: Path, data: bytes, limit: int, mode: str, scratch: Path) -> subprocess.CompletedProcess[str]:
    data_file = scratch / "new-content.json"
    data_file.write_bytes(data)
    return subprocess.run([sys.executable, "-c", _WRITER, str(target), str(data_file), str(limit), mode],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


@pytest.mark.parametrize("mode", ["efbig", "killed"])
def test_a_writer_stopped_mid_write_leaves_the_old_voice_file(tmp_path: Path, mode: str) -> None:
    store = VoiceStore(tmp_path / "voices", tmp_path / "refs")
    voice = store.create(name="Keeper", reference=prepared(tmp_path / "src.wav"), prompt_text="The old words.",
                         prompt_language="en")
    path = store.root / f"{voice.id}.json"
    old = path.read_bytes()
    rewritten = voice.model_copy(update={"prompt_text": "New words " * 90, "description": "d" * 1000})
    new = rewritten.model_dump_json(exclude={"is_default"}).encode()
    limit = len(old) + 100  # the new record is ~2 kB: the write stops well inside it
    assert len(new) > 2 * limit

    result = run_writer(path, new, limit, mode, tmp_path)

    if mode == "efbig":
        assert (result.returncode, result.stdout.strip()) == (3, "EFBIG"), result.stderr
    else:
        assert result.returncode == -signal.SIGXFSZ, (result.returncode, result.stdout, result.stderr)
    assert path.read_bytes() == old  # byte for byte: the old record was never opened for writing
    assert store.get(voice.id) == voice and store.get(voice.id).prompt_text == "The old words."
    assert store.list() == [voice]
    leftovers = sorted(p.name for p in store.root.iterdir() if p.name not in (path.name, "names"))
    if mode == "efbig":
        assert leftovers == [], "the failed writer must remove its temp file"
    else:
        # SIGXFSZ kills before any cleanup can run: the partial temp file stays, hidden and never listed
        assert len(leftovers) == 1 and leftovers[0].startswith(f".{path.name}.") and leftovers[0].endswith(".tmp")
        assert (store.root / leftovers[0]).stat().st_size == limit


@contextmanager
def gateway_with_file_size_limit(shared: Path, limit: int) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`python -m gateway serve` as a subprocess whose files cannot grow past `limit` bytes (EFBIG)."""
    port = free_port()
    env = {**os.environ, "GATEWAY_ENGINES": NO_ENGINE, "GATEWAY_SHARED_DIR": str(shared),
           "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--log-level", "warning"], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit_file_size)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, "the gateway exited"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=60, interval=0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_a_create_that_fails_after_storing_the_reference_releases_the_name(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    audio = make_reference(tmp_path / "src.wav", seconds=5.0).read_bytes()
    fields = {"prompt_text": "A sample.", "prompt_language": "en"}
    with running_gateway(fast_settings(shared, [NO_ENGINE])) as gw:
        seed = httpx.post(f"{gw.url}/v1/voices", data={"name": "seed", **fields}, files={"audio": ("r.wav", audio)},
                          timeout=60)
        assert seed.status_code == 201, seed.text  # the reference is now in the shared dir
        names_dir = shared / "voices" / "names"
        assert len(list(names_dir.iterdir())) == 1

        # A gateway that can store small files (the name claim) but not the ~400-byte voice record:
        # the reference is already stored, the claim is taken, then the record write fails with EFBIG.
        with gateway_with_file_size_limit(shared, limit=200) as (limited, _):
            failed = httpx.post(f"{limited}/v1/voices", data={"name": "Phoenix", **fields},
                                files={"audio": ("r.wav", audio)}, timeout=60)
            error = assert_error(failed, 503, "storage_unavailable")
            assert error["message"] == VOICE_NOT_SAVED
            assert (failed.headers["retry-after"], error["retry_after"]) == ("5", 5)
            assert str(shared) not in failed.text  # no host paths to the client
        assert [v["name"] for v in httpx.get(f"{gw.url}/v1/voices").json()["voices"]] == ["seed"]
        assert len(list(names_dir.iterdir())) == 1, "the failed create kept its name claim"
        # ... so the name is free at once (not only after the stale-claim time)
        again = httpx.post(f"{gw.url}/v1/voices", data={"name": "phoenix", **fields},
                           files={"audio": ("r.wav", audio)}, timeout=60)
        assert again.status_code == 201, again.text
        assert again.json()["name"] == "phoenix"
        assert again.json()["reference_sha256"] == seed.json()["reference_sha256"]


def test_a_voices_dir_that_cannot_be_written_is_503_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    audio = make_reference(tmp_path / "src.wav", seconds=5.0).read_bytes()
    fields = {"prompt_text": "A sample.", "prompt_language": "en"}
    with caplog.at_level(logging.ERROR, logger="gateway.voices"), running_gateway(
        fast_settings(shared, [NO_ENGINE])
    ) as gw:
        voices_dir, aside = gw.settings.voices_dir, shared / "voices.aside"
        voices_dir.rename(aside)
        voices_dir.write_bytes(b"not a directory")  # root ignores permission bits; a file fails every write
        failed = httpx.post(f"{gw.url}/v1/voices", data={"name": "Atlas", **fields},
                            files={"audio": ("r.wav", audio)}, timeout=60)
        error = assert_error(failed, 503, "storage_unavailable")
        assert error["message"] == VOICE_NOT_SAVED
        assert (failed.headers["retry-after"], error["retry_after"]) == ("5", 5)
        assert str(shared) not in failed.text
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(logged) == 1 and logged[0].startswith(  # the operator gets the path and the OS error
            f"cannot save the voice in {voices_dir}: [Errno 20] Not a directory"), logged
        voices_dir.unlink()
        aside.rename(voices_dir)
        created = httpx.post(f"{gw.url}/v1/voices", data={"name": "atlas", **fields},
                             files={"audio": ("r.wav", audio)}, timeout=60)
        assert created.status_code == 201, created.text  # the name was not kept by the failed create

        # a directory where the default marker goes: setting or clearing the default cannot be written
        marker = voices_dir / "default_voice"
        (marker / "in-the-way").mkdir(parents=True)
        default_url = f"{gw.url}/v1/voices/default"
        for response in (httpx.put(default_url, json={"voice_id": created.json()["id"]}, timeout=10),
                         httpx.delete(default_url, timeout=10)):
            error = assert_error(response, 503, "storage_unavailable")
            assert error["message"] == DEFAULT_NOT_SAVED
            assert response.headers["retry-after"] == "5" and str(shared) not in response.text
        assert httpx.get(default_url, timeout=10).json() == {"voice_id": None}
        shutil.rmtree(marker)
        assert httpx.put(default_url, json={"voice_id": created.json()["id"]}, timeout=10).status_code == 200
        assert httpx.get(default_url, timeout=10).json() == {"voice_id": created.json()["id"]}


def test_stale_temp_files_are_swept_at_startup_and_young_ones_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    store = VoiceStore(shared / "voices", shared / "refs")
    voice = store.create(name="Survivor", reference=prepared(tmp_path / "src.wav"), prompt_text="Kept words.",
                         prompt_language="en")
    path = store.root / f"{voice.id}.json"
    old = path.read_bytes()
    for _ in range(2):  # two writers killed mid-write, each leaving its partial temp file
        killed = run_writer(path, b"x" * 4 * len(old), len(old) + 100, "killed", tmp_path)
        assert killed.returncode == -signal.SIGXFSZ, (killed.returncode, killed.stdout, killed.stderr)
    stale, young = sorted(store.root.glob(f".{path.name}.*.tmp"))
    stale_ref = store.refs_dir / ".0123456789abcdef.k1ll3d.tmp"  # a reference writer's, as mkstemp names them
    stale_claim = store.root / "names" / f".{'0' * 64}.0123456789ab.tmp"
    foreign = store.root / ".nfs0000000000000001"  # hidden but not ours (NFS silly rename): never touched
    for planted in (stale_ref, stale_claim, foreign):
        planted.write_bytes(b"partial")
    now = time.time()
    for aged, seconds in ((stale, STALE_TEMP_SECONDS + 60), (stale_ref, STALE_TEMP_SECONDS + 60),
                          (stale_claim, STALE_TEMP_SECONDS + 60), (foreign, 10 * STALE_TEMP_SECONDS),
                          (path, 10 * STALE_TEMP_SECONDS), (young, STALE_TEMP_SECONDS - 60)):
        os.utime(aged, (now - seconds, now - seconds))

    with caplog.at_level(logging.INFO, logger="gateway.voices"), running_gateway(
        fast_settings(shared, [NO_ENGINE])
    ) as gw:
        assert sorted(p.name for p in store.root.glob(".*")) == sorted([young.name, foreign.name])
        assert not stale_ref.exists() and not stale_claim.exists()
        assert path.read_bytes() == old
        assert httpx.get(f"{gw.url}/v1/voices/{voice.id}", timeout=10).json()["prompt_text"] == "Kept words."
    removed = "\n".join(r.getMessage() for r in caplog.records if "stale temp" in r.getMessage())
    assert all(str(p) in removed for p in (stale, stale_ref, stale_claim)), removed
    assert young.name not in removed and foreign.name not in removed
