"""Voice library store: real files in a temp dir, no mocks (the two-process race is in test_voice_store_race.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audio.intake import PreparedReference
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.settings import ModelWeights
from gateway.voices import Voice, VoiceStore
from gateway.voices.files import release_claim, try_claim
from gateway.voices.store import name_key


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    return tmp_path / "shared"


@pytest.fixture
def store(shared: Path) -> VoiceStore:
    return VoiceStore(shared / "voices", shared / "refs")


def create(store: VoiceStore, name: str, prepared: PreparedReference, **options: Any) -> Voice:
    return store.create(name=name, reference=prepared, prompt_text="Hello there.", prompt_language="en", **options)


def tree_snapshot(top: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `top` with its mtime and (for files) content, to prove nothing changed."""
    snapshot: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(top.rglob("*")):
        stat = path.lstat()
        snapshot[str(path.relative_to(top))] = (stat.st_mtime_ns, path.read_bytes() if path.is_file() else None)
    return snapshot


# --- CRUD and persistence


def test_create_get_resolve_list_delete_round_trip(store: VoiceStore, prepared: PreparedReference) -> None:
    weights = ModelWeights(gpt="GPT_weights/a.ckpt", sovits="SoVITS_weights/a.pth")
    voice = create(store, "  Narrator One ", prepared, description="calm", weights=weights)

    assert voice.id.startswith("voice_") and len(voice.id) == 22
    assert voice.name == "Narrator One"
    assert (voice.prompt_text, voice.prompt_language, voice.description) == ("Hello there.", "en", "calm")
    assert voice.reference_sha256 == prepared.sha256
    assert (voice.reference_duration, voice.reference_sample_rate) == (3.0, 32000)
    assert voice.weights == weights
    assert voice.created_at.utcoffset() == timedelta(0)
    assert voice.is_default is False

    record = json.loads((store.root / f"{voice.id}.json").read_text())
    assert record["id"] == voice.id and record["name"] == "Narrator One"
    assert "is_default" not in record
    assert store.reference_path(voice) == store.refs_dir / f"{prepared.sha256}.wav"
    assert store.reference_path(voice).read_bytes() == prepared.wav

    assert store.get(voice.id) == voice
    assert store.resolve(voice.id) == voice
    assert store.resolve("narrator one") == voice
    assert store.resolve(" NARRATOR ONE  ") == voice
    assert store.list() == [voice]

    store.delete(voice.id)
    with pytest.raises(NotFound) as caught:
        store.get(voice.id)
    assert caught.value.code == "voice_not_found" and caught.value.status == 404
    with pytest.raises(NotFound):
        store.resolve("Narrator One")
    with pytest.raises(NotFound):
        store.delete(voice.id)
    assert store.list() == []
    assert store.reference_path(voice).read_bytes() == prepared.wav, "delete must keep the shared reference"


def test_new_store_on_same_directory_sees_everything(shared: Path, prepared: PreparedReference) -> None:
    first = VoiceStore(shared / "voices", shared / "refs")
    made = [create(first, f"voice {n}", prepared) for n in range(3)]
    first.set_default(made[1].id)

    second = VoiceStore(shared / "voices", shared / "refs")
    listed = second.list()
    assert [v.id for v in listed] == [v.id for v in made], "list is ordered by creation time"
    assert [v.is_default for v in listed] == [False, True, False]
    assert second.default() == made[1].model_copy(update={"is_default": True})
    assert second.resolve("VOICE 2").id == made[2].id
    with pytest.raises(Conflict):
        create(second, "Voice 0", prepared)


def test_voices_sharing_a_reference_share_one_file(store: VoiceStore, prepared: PreparedReference) -> None:
    first, second = create(store, "a", prepared), create(store, "b", prepared)
    assert store.reference_path(first) == store.reference_path(second)
    assert sorted(p.name for p in store.refs_dir.iterdir()) == [f"{prepared.sha256}.wav"]
    store.delete(first.id)
    assert store.reference_path(second).read_bytes() == prepared.wav


# --- names


@pytest.mark.parametrize("duplicate", ["Alice", "alice", "  ALICE ", "ａｌｉｃｅ", "AlIcE"])
def test_duplicate_name_in_any_case_is_a_conflict(
    store: VoiceStore, prepared: PreparedReference, duplicate: str
) -> None:
    original = create(store, "Alice", prepared)
    with pytest.raises(Conflict) as caught:
        create(store, duplicate, prepared)
    assert caught.value.code == "voice_name_taken" and caught.value.status == 409
    assert [v.id for v in store.list()] == [original.id]
    assert sorted(p.name for p in store.root.glob("*.json")) == [f"{original.id}.json"]
    assert len(list((store.root / "names").iterdir())) == 1


def test_delete_frees_the_name(store: VoiceStore, prepared: PreparedReference) -> None:
    old = create(store, "Reusable", prepared)
    store.delete(old.id)
    assert list((store.root / "names").iterdir()) == []
    new = create(store, "REUSABLE", prepared)
    assert new.id != old.id
    assert store.resolve("reusable").id == new.id


@pytest.mark.parametrize(
    "bad_name",
    [
        "",
        "   ",
        "x" * 65,
        "line\nbreak",
        "tab\there",
        "nul\x00byte",
        "bell\x07",
        "line\u2028separator",
        "voice_0123456789abcdef",
    ],
)
def test_invalid_names_are_rejected(store: VoiceStore, prepared: PreparedReference, bad_name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        create(store, bad_name, prepared)
    assert caught.value.code == "invalid_voice_name" and caught.value.status == 422
    assert store.list() == [] and list((store.root / "names").iterdir()) == []


def test_name_limits_and_unicode_are_accepted(store: VoiceStore, prepared: PreparedReference) -> None:
    assert create(store, "x" * 64, prepared).name == "x" * 64
    assert create(store, "  Zoë — 声音 🎙  ", prepared).name == "Zoë — 声音 🎙"
    assert store.resolve("ZOË — 声音 🎙").name == "Zoë — 声音 🎙"


def test_failed_create_releases_the_name(store: VoiceStore, prepared: PreparedReference) -> None:
    store.refs_dir.rmdir()
    store.refs_dir.write_bytes(b"not a directory")  # store_reference can no longer write: a real OSError
    with pytest.raises(OSError):
        create(store, "Phoenix", prepared)
    assert list((store.root / "names").iterdir()) == []
    assert list(store.root.glob("*.json")) == []

    store.refs_dir.unlink()
    store.refs_dir.mkdir()
    assert create(store, "Phoenix", prepared).name == "Phoenix"


def test_claim_left_by_a_crashed_create_is_reclaimed_only_when_stale(
    shared: Path, prepared: PreparedReference
) -> None:
    store = VoiceStore(shared / "voices", shared / "refs", stale_claim_seconds=30)
    orphan_claim = store.root / "names" / name_key("Orphan")
    orphan_claim.write_text("voice_00000000deadbeef")  # claimed, then the process died before saving

    with pytest.raises(Conflict):
        create(store, "orphan", prepared)  # too fresh: could be a create still in progress
    old = time.time() - 60
    os.utime(orphan_claim, (old, old))
    voice = create(store, "orphan", prepared)
    assert orphan_claim.read_text() == voice.id

    os.utime(orphan_claim, (old, old))  # an old claim whose voice exists is never taken
    with pytest.raises(Conflict):
        create(store, "ORPHAN", prepared)


def test_reference_with_a_malformed_hash_is_refused_before_writing(
    tmp_path: Path, store: VoiceStore, prepared: PreparedReference
) -> None:
    before = tree_snapshot(tmp_path)
    for bad_hash in ("../../escaped", prepared.sha256.upper(), prepared.sha256[:-1]):
        forged = dataclasses.replace(prepared, sha256=bad_hash)
        with pytest.raises(InvalidInput) as caught:
            create(store, "forged", forged)
        assert caught.value.code == "invalid_voice"
    assert tree_snapshot(tmp_path) == before


def test_release_claim_only_removes_the_expected_holder(tmp_path: Path) -> None:
    claim = tmp_path / "claim"
    assert try_claim(claim, "voice_1111111111111111")
    assert not try_claim(claim, "voice_2222222222222222")
    assert not release_claim(claim, "voice_2222222222222222")
    assert claim.read_text() == "voice_1111111111111111"
    assert release_claim(claim, "voice_1111111111111111")
    assert not claim.exists()
    assert not release_claim(claim, "voice_1111111111111111")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no temp or set-aside files left"


# --- ids that try to escape root


HOSTILE_IDS = [
    "../etc/passwd",
    "..",
    ".",
    "",
    "voice_../../x",
    "/etc/passwd",
    "%2e%2e%2fx",
    "..%2F..%2Fx",
    "voice_0123456789abcdef\x00",
    "\x00",
    "voice_0123456789abcdef/../../x",
    "voice_0123456789abcdef\n",
    "VOICE_0123456789ABCDEF",
    "voice_0123456789abcdef.json",
    "names/../../x",
    "default_voice",
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_ids_are_not_found_and_touch_nothing(
    tmp_path: Path, store: VoiceStore, prepared: PreparedReference, hostile: str
) -> None:
    victim = create(store, "victim", prepared)
    store.set_default(victim.id)
    # A valid-looking record outside root, where a traversal would land.
    (tmp_path / "x.json").write_text((store.root / f"{victim.id}.json").read_text())
    absolute = str(tmp_path / "x")
    before = tree_snapshot(tmp_path)

    for candidate in (hostile, absolute):
        for operation in (store.get, store.delete, store.set_default, store.resolve):
            with pytest.raises(NotFound) as caught:
                operation(candidate)
            assert caught.value.code == "voice_not_found"

    assert tree_snapshot(tmp_path) == before
    assert store.default() == store.get(victim.id)


# --- default voice


def test_default_set_switch_clear_and_deleted(store: VoiceStore, prepared: PreparedReference) -> None:
    first, second = create(store, "first", prepared), create(store, "second", prepared)
    assert store.default() is None

    store.set_default(first.id)
    assert store.default() == first.model_copy(update={"is_default": True})
    assert store.get(first.id).is_default and not store.get(second.id).is_default
    assert store.resolve("FIRST").is_default

    store.set_default(second.id)
    assert store.default() == second.model_copy(update={"is_default": True})
    assert [v.is_default for v in store.list()] == [False, True]

    store.set_default(None)
    assert store.default() is None
    assert not any(v.is_default for v in store.list())
    store.set_default(None)  # clearing twice is fine

    with pytest.raises(NotFound):
        store.set_default("voice_00000000000000ff")
    assert store.default() is None

    store.set_default(first.id)
    store.delete(first.id)
    assert store.default() is None
    assert [v.is_default for v in store.list()] == [False]


# --- damaged directory contents


def test_list_skips_partial_and_corrupt_files(
    store: VoiceStore, prepared: PreparedReference, caplog: pytest.LogCaptureFixture
) -> None:
    good = create(store, "good", prepared)
    text = (store.root / f"{good.id}.json").read_text()
    partial_id, foreign_id, garbage_id = "voice_aaaaaaaaaaaaaaaa", "voice_bbbbbbbbbbbbbbbb", "voice_cccccccccccccccc"
    (store.root / f"{partial_id}.json").write_text(text.replace(good.id, partial_id)[: len(text) // 2])
    (store.root / f"{foreign_id}.json").write_text(text)  # valid JSON, but its id is another file's
    (store.root / f"{garbage_id}.json").write_bytes(b"\xff\xfe\x00 not json")
    (store.root / "voice_dddddddddddddddd.json").mkdir()
    (store.root / f".{good.id}.json.0123.tmp").write_text(text[:10])  # a writer's unfinished temp file
    (store.root / "notes.txt").write_text("hello")

    with caplog.at_level(logging.WARNING, logger="gateway.voices"):
        assert store.list() == [good]
    skipped = " ".join(record.getMessage() for record in caplog.records)
    for bad in (partial_id, foreign_id, garbage_id, "voice_dddddddddddddddd"):
        assert bad in skipped
    for bad in (partial_id, foreign_id, garbage_id, "voice_dddddddddddddddd"):
        with pytest.raises(NotFound):
            store.get(bad)
