"""Voice library, unit by unit: exact messages, the on-disk layout and how each file is written, claim edges.

Fast and precise (they back `make mutate`); complements tests/test_voice_store.py. Real files in a temp
dir, a real WAV reference; how files are written (hidden temp file, then rename or link) is observed
through Python's audit hooks (tests/fs_events.py), never by mocking.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from gateway.audio.intake import PreparedReference
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.voices import Voice, VoiceStore, normalize_voice_name
from gateway.voices.files import (
    STALE_TEMP_SECONDS,
    _try_claim_exclusive,
    claim_age_seconds,
    claim_holder,
    release_claim,
    sweep_stale_temps,
    try_claim,
    write_atomic,
)
from gateway.voices.store import name_key
from tests.fs_events import calls_in, recording

HEX12 = "[0-9a-f]{12}"


@pytest.fixture(scope="module")
def reference() -> PreparedReference:
    """3 s of a 220 Hz tone as a PCM16 WAV, wrapped the way reference intake hands it over."""
    rate = 16_000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(3 * rate) / rate)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, tone, rate, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()
    return PreparedReference(wav, hashlib.sha256(wav).hexdigest(), rate, 3.0, 0.0, ())


@pytest.fixture
def store(tmp_path: Path) -> VoiceStore:
    return VoiceStore(tmp_path / "voices", tmp_path / "refs")


def create(store: VoiceStore, name: str, reference: PreparedReference, **options: Any) -> Voice:
    return store.create(name=name, reference=reference, prompt_text="Hello.", prompt_language="en", **options)


def files_under(top: Path) -> list[str]:
    return sorted(str(path.relative_to(top)) for path in top.rglob("*") if path.is_file())


# ---------------------------------------------------------------------------- layout and atomic writes


def test_every_file_is_written_as_a_hidden_temp_file_then_moved_into_place(
    store: VoiceStore, reference: PreparedReference
) -> None:
    names = store.root / "names"
    with recording() as calls:
        voice = create(store, "Alice", reference)
    key = name_key("Alice")
    # The name claim: a temp file hard-linked onto names/<key> (fails if the name is taken).
    claim_temps = [call.path() for call in calls_in(calls, "open", names)]
    assert len(claim_temps) == 1 and re.fullmatch(rf"\.{key}\.{HEX12}\.tmp", claim_temps[0].name)
    assert [(c.path(0), c.path(1)) for c in calls if c.event == "os.link"] == [(claim_temps[0], names / key)]
    # The record: a temp file in the same directory, renamed over voices/<id>.json.
    record_temps = [call for call in calls_in(calls, "open", store.root)]
    assert len(record_temps) == 1 and record_temps[0].args[1] == "x"  # exclusive create
    assert re.fullmatch(rf"\.{voice.id}\.json\.{HEX12}\.tmp", record_temps[0].path().name)
    renames = [(c.path(0), c.path(1)) for c in calls_in(calls, "os.rename", store.root)]
    assert renames == [(record_temps[0].path(), store.root / f"{voice.id}.json")]

    with recording() as calls:
        store.set_default(voice.id)
    marker_temps = [call.path() for call in calls_in(calls, "open", store.root) if call.args[1] == "x"]
    assert len(marker_temps) == 1 and re.fullmatch(rf"\.default_voice\.{HEX12}\.tmp", marker_temps[0].name)
    assert [(c.path(0), c.path(1)) for c in calls if c.event == "os.rename"] == [
        (marker_temps[0], store.root / "default_voice")
    ]
    assert (store.root / "default_voice").read_text() == voice.id

    with recording() as calls:
        store.delete(voice.id)
    released = [(c.path(0), c.path(1)) for c in calls if c.event == "os.rename"]
    assert len(released) == 1 and released[0][0] == names / key
    assert released[0][1].parent == names
    assert re.fullmatch(rf"\.{key}\.{HEX12}\.released", released[0][1].name)
    assert files_under(store.root) == ["default_voice"]


def test_refs_dir_and_root_may_be_nested_anywhere(tmp_path: Path, reference: PreparedReference) -> None:
    store = VoiceStore(tmp_path / "a" / "voices", tmp_path / "b" / "c" / "refs")
    voice = create(store, "nested", reference)
    assert store.reference_path(voice) == tmp_path / "b" / "c" / "refs" / f"{reference.sha256}.wav"
    assert store.reference_path(voice).read_bytes() == reference.wav


def test_write_atomic_raises_the_real_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "file", b"data")
    (tmp_path / "target").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "target", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    write_atomic(tmp_path / "file", b"one")
    write_atomic(tmp_path / "file", b"two")
    assert (tmp_path / "file").read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "target"]


def test_try_claim_raises_the_real_error_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        try_claim(tmp_path / "missing" / "claim", "voice_1111111111111111")


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_exclusive_create_fallback_claims_once_with_the_holder(tmp_path: Path, umask_022: None) -> None:
    """The path taken on file systems without hard links (O_CREAT | O_EXCL)."""
    claim = tmp_path / "claim"
    assert _try_claim_exclusive(claim, b"voice_1111111111111111") is True
    assert claim.read_bytes() == b"voice_1111111111111111"
    assert claim.stat().st_mode & 0o777 == 0o644
    assert _try_claim_exclusive(claim, b"voice_2222222222222222") is False
    assert claim.read_bytes() == b"voice_1111111111111111"
    assert claim_holder(claim) == "voice_1111111111111111"


def test_claim_reading_helpers(tmp_path: Path) -> None:
    claim = tmp_path / "claim"
    assert claim_holder(claim) is None and claim_age_seconds(claim) is None
    claim.write_bytes(b"  voice_1111111111111111\n")
    assert claim_holder(claim) == "voice_1111111111111111"
    old = time.time() - 100
    os.utime(claim, (old, old))
    age = claim_age_seconds(claim)
    assert age is not None and 100 <= age < 110
    claim.write_bytes(b"\xff\xfe not utf-8")
    assert claim_holder(claim) is None  # unreadable counts as absent
    claim.write_text("Zoë", encoding="utf-8")
    assert claim_holder(claim) == "Zoë"


def test_release_claim_puts_back_a_claim_held_by_someone_else_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    claim = tmp_path / "claim"
    assert try_claim(claim, "voice_1111111111111111")
    with caplog.at_level(logging.DEBUG, logger="gateway.voices"):
        assert release_claim(claim, "voice_2222222222222222") is False
    assert caplog.records == []
    assert claim.read_text() == "voice_1111111111111111"
    assert [p.name for p in tmp_path.iterdir()] == ["claim"]


# ---------------------------------------------------------------------------- names and messages


def test_a_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        normalize_voice_name(42)  # type: ignore[arg-type]
    assert (caught.value.code, caught.value.message) == ("invalid_voice_name", "voice name must be a string")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "voice name must be 1–64 characters after trimming spaces; got 0"),
        ("  " + "x" * 65 + " ", "voice name must be 1–64 characters after trimming spaces; got 65"),
        ("a\tb", "voice name must not contain control, invisible or bidirectional-control characters (U+0009)"),
        ("a\u2029b", "voice name must not contain control, invisible or bidirectional-control characters (U+2029)"),
        ("a\u202eb", "voice name must not contain control, invisible or bidirectional-control characters (U+202E)"),
        ("VOICE_0123456789ABCDEF", "voice name must not look like a voice id (voice_ + 16 hex digits)"),
    ],
    ids=["empty", "too-long", "tab", "paragraph-separator", "bidi-override", "id-lookalike"],
)
def test_invalid_name_messages(name: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalize_voice_name(name)
    assert (caught.value.status, caught.value.code, caught.value.message) == (422, "invalid_voice_name", message)


def test_names_just_like_an_id_are_fine() -> None:
    assert normalize_voice_name(" voice_0123456789abcde ") == "voice_0123456789abcde"  # 15 hex digits
    assert normalize_voice_name("x" * 64) == "x" * 64


def test_conflict_message_names_the_taken_name(store: VoiceStore, reference: PreparedReference) -> None:
    create(store, "Alice", reference)
    with pytest.raises(Conflict) as caught:
        create(store, " ALICE ", reference)
    assert caught.value.message == "a voice named 'ALICE' already exists"


def test_echoed_values_are_cut_at_80_characters(store: VoiceStore, reference: PreparedReference) -> None:
    with pytest.raises(NotFound) as caught:
        store.get("x" * 78)  # repr is exactly 80 characters: shown whole
    assert caught.value.message == "no voice with id '" + "x" * 78 + "'"
    with pytest.raises(NotFound) as caught:
        store.get("x" * 79)
    assert caught.value.message == "no voice with id '" + "x" * 79 + "…"
    invisible = "\ue000" * 20  # private use: a valid name (not a control, format or space) that repr escapes
    create(store, invisible, reference)
    with pytest.raises(Conflict) as conflict:
        create(store, invisible, reference)
    shown = "'" + "\\ue000" * 13 + "\\" + "…"  # repr escapes it; cut after 80 characters
    assert conflict.value.message == f"a voice named {shown} already exists"


def test_not_found_messages_echo_the_id_or_name(store: VoiceStore, reference: PreparedReference) -> None:
    missing = "voice_00000000000000ff"
    for operation in (store.get, store.delete, store.set_default):
        with pytest.raises(NotFound) as caught:
            operation(missing)
        assert (caught.value.code, caught.value.message) == ("voice_not_found", f"no voice with id '{missing}'")
        with pytest.raises(NotFound) as caught:
            operation("../x")
        assert caught.value.message == "no voice with id '../x'"
    with pytest.raises(NotFound) as caught:
        store.resolve("nobody")
    assert caught.value.message == "no voice with id or name 'nobody'"
    with pytest.raises(NotFound) as caught:
        store.resolve("bad\nname")
    assert caught.value.message == "no voice with id or name 'bad\\nname'"
    with pytest.raises(NotFound) as caught:
        store.resolve(missing)
    assert caught.value.message == f"no voice with id '{missing}'"


def test_the_path_gate_refuses_anything_but_an_id(store: VoiceStore) -> None:
    assert store._voice_path("voice_0123456789abcdef") == store.root / "voice_0123456789abcdef.json"
    with pytest.raises(NotFound) as caught:
        store._voice_path("../../etc/passwd")
    assert caught.value.message == "no voice with id '../../etc/passwd'"


def test_invalid_record_fields_are_named_in_the_message(store: VoiceStore, reference: PreparedReference) -> None:
    forged = PreparedReference(reference.wav, "not-a-hash", reference.sample_rate, 3.0, 0.0, ())
    with pytest.raises(InvalidInput) as caught:
        create(store, "forged", forged)
    assert caught.value.code == "invalid_voice"
    assert caught.value.message == "reference_sha256: String should match pattern '^[0-9a-f]{64}$'"
    with pytest.raises(InvalidInput) as caught:
        create(store, "nested", reference, weights={"gpt": 5})
    assert caught.value.message == "weights.gpt: Input should be a valid string"
    assert files_under(store.root) == []


# ---------------------------------------------------------------------------- time


@pytest.fixture
def far_local_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time 9 hours ahead of UTC (POSIX TZ rule, no tz database needed)."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def test_created_at_is_utc_whatever_the_local_timezone(
    store: VoiceStore, reference: PreparedReference, far_local_timezone: None
) -> None:
    before = datetime.now(UTC)
    voice = create(store, "timely", reference)
    after = datetime.now(UTC)
    assert before <= voice.created_at <= after
    assert store.get(voice.id).created_at == voice.created_at


def test_an_unsaved_claim_is_stale_after_60_seconds_by_default(store: VoiceStore, reference: PreparedReference) -> None:
    claim = store.root / "names" / name_key("Orphan")
    claim.write_text("voice_00000000deadbeef")
    old = time.time() - 60.5
    os.utime(claim, (old, old))
    voice = create(store, "orphan", reference)
    assert claim.read_text() == voice.id


# ---------------------------------------------------------------------------- reads around damage


def test_list_skips_files_named_like_voices_but_not_ids(store: VoiceStore, reference: PreparedReference) -> None:
    made = [create(store, f"v{n}", reference) for n in range(3)]
    for n in range(30):
        (store.root / f"voice_not_an_id_{n}.json").write_text("{}")
    assert store.list() == made


def test_resolve_ignores_a_claim_that_holds_no_usable_id(store: VoiceStore) -> None:
    names = store.root / "names"
    for holder in ("garbage", "voice_00000000000000ff", ""):  # not an id; an id without a record; in progress
        (names / name_key("Ghost")).write_text(holder)
        with pytest.raises(NotFound) as caught:
            store.resolve("ghost")
        assert caught.value.message == "no voice with id or name 'ghost'"


def test_reclaim_decisions(store: VoiceStore, reference: PreparedReference) -> None:
    names = store.root / "names"
    assert store._reclaim_if_stale(names / "gone") is True  # released since our attempt

    voice = create(store, "kept", reference)
    claim = names / name_key("kept")
    old = time.time() - 3600
    os.utime(claim, (old, old))
    assert store._reclaim_if_stale(claim) is False  # its voice exists: never taken, however old
    assert claim.read_text() == voice.id

    fresh = names / name_key("fresh")
    fresh.write_text("voice_00000000deadbeef")
    assert store._reclaim_if_stale(fresh) is False  # a create may still be in progress
    assert fresh.read_text() == "voice_00000000deadbeef"
    os.utime(fresh, (old, old))
    assert store._reclaim_if_stale(fresh) is True
    assert not fresh.exists()


# ---------------------------------------------------------------------- sweeping temp files of dead writers


def aged(path: Path, seconds: float, data: bytes = b"partial") -> Path:
    """Create `path` with a modification time `seconds` in the past."""
    path.write_bytes(data)
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))
    return path


def test_sweep_removes_only_our_stale_temp_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stale = aged(tmp_path / ".vc_1.json.a1b2c3d4e5f6.tmp", STALE_TEMP_SECONDS + 30)
    young = aged(tmp_path / ".vc_2.json.a1b2c3d4e5f6.tmp", STALE_TEMP_SECONDS - 30)
    kept = [
        young,
        aged(tmp_path / ".nfs000000001234", STALE_TEMP_SECONDS * 10),  # not ours: NFS's silly-rename
        aged(tmp_path / "visible.tmp", STALE_TEMP_SECONDS * 10),  # not hidden: not one of our temp names
        aged(tmp_path / ".vc_3.json.released", STALE_TEMP_SECONDS * 10),  # a claim set aside, kept on purpose
    ]
    (tmp_path / ".a-dir.tmp").mkdir()  # only files are swept
    os.utime(tmp_path / ".a-dir.tmp", (0, 0))
    with caplog.at_level(logging.WARNING, logger="gateway.voices.files"):
        removed = sweep_stale_temps(tmp_path)
    assert removed == [stale]
    assert not stale.exists() and all(path.exists() for path in kept) and (tmp_path / ".a-dir.tmp").is_dir()
    [record] = caplog.records
    assert re.fullmatch(rf"removed stale temp file {re.escape(str(stale))} \(63\d s old; its writer died mid-write\)",
                        record.getMessage()), record.getMessage()


def test_sweep_leaves_a_symlink_named_like_a_temp_file(tmp_path: Path) -> None:
    target = aged(tmp_path / "voice.json", STALE_TEMP_SECONDS * 10, b"{}")
    link = tmp_path / ".voice.json.0123456789ab.tmp"
    link.symlink_to(target)
    stamp = time.time() - STALE_TEMP_SECONDS * 10
    os.utime(link, (stamp, stamp), follow_symlinks=False)  # the link itself is old too
    assert sweep_stale_temps(tmp_path) == []
    assert link.is_symlink() and target.read_bytes() == b"{}"


def test_sweep_age_is_a_parameter_and_the_cutoff_is_inclusive_of_older_files(tmp_path: Path) -> None:
    older = aged(tmp_path / ".a.tmp", 20)
    newer = aged(tmp_path / ".b.tmp", 5)
    assert sweep_stale_temps(tmp_path, older_than=10) == [older]
    assert newer.exists()
    assert sweep_stale_temps(tmp_path, older_than=0) == [newer]


def test_sweep_of_a_missing_directory_logs_and_returns_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.voices.files"):
        assert sweep_stale_temps(tmp_path / "absent") == []
    [record] = caplog.records
    assert record.getMessage().startswith(f"cannot sweep temp files in {tmp_path / 'absent'}: ")


def test_store_sweeps_its_voices_names_and_refs_dirs(store: VoiceStore, reference: PreparedReference) -> None:
    create(store, "Sweep", reference)  # makes the names dir
    planted = [aged(directory / ".x.json.0123456789ab.tmp", STALE_TEMP_SECONDS + 60)
               for directory in (store.root, store.root / "names", store.refs_dir)]
    assert sorted(store.sweep_stale_temps()) == sorted(planted)
    assert not any(path.exists() for path in planted)
    assert store.resolve("Sweep").name == "Sweep"
