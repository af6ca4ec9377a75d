"""Two gateway-like processes writing one voice library at once: exactly one winner per name.

Run as a script, this file is the worker of the race (see `_race_worker`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import Conflict
from gateway.voices import Voice, VoiceStore

# the worker runs with the repository root on PYTHONPATH, so this import works there too
from tests.support import prepared_reference

REPO_ROOT = Path(__file__).resolve().parent.parent


def _race_worker(argv: list[str]) -> None:
    """Child process: wait for the go signal, then create voices as fast as possible and report."""
    root, refs, go_file, index, shared_count, unique_count = argv
    store = VoiceStore(Path(root), Path(refs))
    reference = prepared_reference(freq=220.0 + 110 * int(index))
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not Path(go_file).exists():
        if time.monotonic() > deadline:
            raise SystemExit("never got the go signal")
    won: dict[str, str] = {}
    lost: list[str] = []
    for n in range(max(int(shared_count), int(unique_count))):
        names = []
        if n < int(shared_count):  # same name in both processes, spelled in a different case
            names.append(f"shared {n}".upper() if index == "1" else f"shared {n}")
        if n < int(unique_count):
            names.append(f"process {index} voice {n}")
        for name in names:
            try:
                won[name] = store.create(name=name, reference=reference, prompt_text="t", prompt_language="en").id
            except Conflict:
                lost.append(name)
    print(json.dumps({"won": won, "lost": lost}), flush=True)


def test_two_processes_creating_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = VoiceStore(tmp_path / "voices", tmp_path / "refs")
    shared_count, unique_count = 40, 40
    go_file = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                *map(str, (store.root, store.refs_dir, go_file, index, shared_count, unique_count)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=env,
        )
        for index in range(2)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    go_file.touch()

    # Read the library while the writers race: a reader must never see a partial record.
    snapshots = 0
    with caplog.at_level(logging.WARNING, logger="gateway.voices"):
        while any(worker.poll() is None for worker in workers):
            listed = store.list()
            assert len({v.id for v in listed}) == len(listed)
            snapshots += 1
            time.sleep(0.005)
    assert not caplog.records, [record.getMessage() for record in caplog.records]

    reports = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        reports.append(json.loads(out.strip().splitlines()[-1]))

    winners: dict[str, str] = {}
    for n in range(shared_count):
        lower, upper = f"shared {n}", f"shared {n}".upper()
        won_by = [lower in reports[0]["won"], upper in reports[1]["won"]]
        assert won_by.count(True) == 1, f"{lower!r} must have exactly one winner"
        assert (lower in reports[0]["lost"]) != (upper in reports[1]["lost"])
        winners[lower] = reports[0]["won"].get(lower) or reports[1]["won"][upper]
    for index, report in enumerate(reports):
        for n in range(unique_count):
            winners[f"process {index} voice {n}"] = report["won"][f"process {index} voice {n}"]

    listed = store.list()
    assert sorted(v.id for v in listed) == sorted(winners.values())
    assert len(listed) == shared_count + 2 * unique_count
    for voice in listed:
        assert store.resolve(voice.name.lower()).id == voice.id
    for path in store.root.glob("*.json"):
        assert Voice.model_validate(json.loads(path.read_text())).id == path.stem
    claims = list((store.root / "names").iterdir())
    assert len(claims) == len(listed)
    assert {claim.read_text() for claim in claims} == {v.id for v in listed}
    assert not [p for p in store.root.rglob(".*")], "no temp files left behind"
    assert len(list(store.refs_dir.iterdir())) == 2
    assert snapshots > 0


if __name__ == "__main__":
    _race_worker(sys.argv[1:])
