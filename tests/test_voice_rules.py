"""Voice-library rules that only a dying or failing writer shows: old files survive, names come back.

Writers run as real subprocesses under `RLIMIT_FSIZE`, so a write really fails (EFBIG) or the process
really dies (SIGXFSZ) in the middle of a file, the way a full disk or a crash would do it.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway.audio.intake import PreparedReference, prepare_reference
from gateway.voices import VoiceStore
from tests.gateway_support import fast_settings, running_gateway
from tests.support import assert_error, free_port, make_reference, wait_until

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
            assert_error(failed, 500, "internal_error", contains="internal error")
        assert [v["name"] for v in httpx.get(f"{gw.url}/v1/voices").json()["voices"]] == ["seed"]
        assert len(list(names_dir.iterdir())) == 1, "the failed create kept its name claim"
        # ... so the name is free at once (not only after the stale-claim time)
        again = httpx.post(f"{gw.url}/v1/voices", data={"name": "phoenix", **fields},
                           files={"audio": ("r.wav", audio)}, timeout=60)
        assert again.status_code == 201, again.text
        assert again.json()["name"] == "phoenix"
        assert again.json()["reference_sha256"] == seed.json()["reference_sha256"]
