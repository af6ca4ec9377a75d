"""The result cache (services/result_cache.py) on real files: LRU by bytes, restarts, leftovers, damage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.audio.wav import pcm16_wav
from gateway.services.result_cache import ResultCache, result_key
from gateway.voices.files import STALE_TEMP_SECONDS


def clip(seconds: float, freq: float = 220.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return pcm16_wav((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def key(name: str) -> str:
    return result_key({"text": name})


def entry_bytes(cache_dir: Path, k: str) -> int:
    return (cache_dir / f"{k}.wav").stat().st_size + (cache_dir / f"{k}.json").stat().st_size


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_stored_result_comes_back_with_its_metadata(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "results", 10_000_000)
    cache.load()
    wav = clip(0.5)
    assert cache.get(key("a")) is None
    assert cache.put(key("a"), wav, {"timing": {"target": 0.5}, "warnings": ["w"]})
    hit = cache.get(key("a"))
    assert hit is not None
    assert hit.wav == wav and hit.sample_rate == 16000 and hit.frames == 8000
    assert hit.meta == {"timing": {"target": 0.5}, "warnings": ["w"]}
    assert cache.total_bytes == entry_bytes(tmp_path / "results", key("a"))


def test_keys_are_canonical_and_change_with_any_input() -> None:
    assert result_key({"a": 1, "b": [1, 2]}) == result_key({"b": [1, 2], "a": 1})
    assert result_key({"a": 1}) != result_key({"a": 2})
    assert result_key({"text": "é"}) != result_key({"text": "e"})
    assert len(result_key({})) == 64


def test_the_least_recently_used_go_first_when_the_bytes_run_out(tmp_path: Path) -> None:
    directory = tmp_path / "results"
    probe = ResultCache(directory, 10_000_000)
    probe.load()
    probe.put(key("probe"), clip(1.0), {})
    size = entry_bytes(directory, key("probe"))  # every entry below is this size (same length, same meta)
    (directory / f"{key('probe')}.wav").unlink()
    (directory / f"{key('probe')}.json").unlink()

    cache = ResultCache(directory, 2 * size + size // 2)  # room for two
    cache.load()
    cache.put(key("a"), clip(1.0, 200), {})
    cache.put(key("b"), clip(1.0, 300), {})
    assert cache.get(key("a")) is not None  # a is now more recent than b
    cache.put(key("c"), clip(1.0, 400), {})
    assert not (directory / f"{key('b')}.wav").exists() and not (directory / f"{key('b')}.json").exists()
    assert cache.get(key("b")) is None
    assert cache.get(key("a")) is not None and cache.get(key("c")) is not None
    assert len(cache) == 2 and cache.total_bytes == 2 * size <= cache.max_bytes
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f"{key(n)}.{ext}" for n in ("a", "c") for ext in ("wav", "json")
    )
    # an entry bigger than the whole bound is not stored (it would evict everything and itself)
    assert not cache.put(key("huge"), clip(10.0), {})
    assert len(cache) == 2


def test_a_new_instance_finds_earlier_entries_in_their_recency_order(tmp_path: Path) -> None:
    directory = tmp_path / "results"
    first = ResultCache(directory, 10_000_000)
    first.load()
    for n, name in enumerate(("old", "mid", "new")):
        first.put(key(name), clip(1.0, 200 + 100 * n), {"name": name})
        age(directory / f"{key(name)}.wav", 300 - 100 * n)  # mtime is recency
    size = entry_bytes(directory, key("old"))

    second = ResultCache(directory, 10_000_000)
    second.load()
    assert len(second) == 3 and second.total_bytes == 3 * size
    hit = second.get(key("mid"))
    assert hit is not None and hit.meta == {"name": "mid"}

    # a smaller bound at start-up evicts down to it, oldest first (old; mid was just used)
    third = ResultCache(directory, size + size // 2)
    third.load()
    assert len(third) == 1
    assert third.get(key("mid")) is not None
    assert not (directory / f"{key('old')}.wav").exists() and not (directory / f"{key('new')}.wav").exists()


def test_leftovers_of_dead_writers_are_ignored_and_old_ones_removed(tmp_path: Path) -> None:
    directory = tmp_path / "results"
    directory.mkdir()
    wav = clip(0.5)
    fresh_temp = directory / f".{key('a')}.wav.0123456789ab.tmp"
    stale_temp = directory / f".{key('b')}.json.0123456789ab.tmp"
    fresh_orphan = directory / f"{key('c')}.wav"  # its JSON is still being written by another replica
    stale_orphan = directory / f"{key('d')}.wav"  # its writer died before writing the JSON
    for path in (fresh_temp, stale_temp, fresh_orphan, stale_orphan):
        path.write_bytes(wav)
    age(stale_temp, STALE_TEMP_SECONDS + 60)
    age(stale_orphan, STALE_TEMP_SECONDS + 60)

    cache = ResultCache(directory, 10_000_000)
    cache.load()
    assert len(cache) == 0 and cache.total_bytes == 0
    assert fresh_temp.exists() and fresh_orphan.exists()
    assert not stale_temp.exists() and not stale_orphan.exists()
    assert cache.get(key("c")) is None  # no JSON: not an entry yet
    (directory / f"{key('c')}.json").write_text("{}")  # the other replica finishes
    assert cache.get(key("c")) is not None  # found on disk though not in our index
    assert len(cache) == 1


def test_damage_and_write_failures_are_misses_and_disabled_means_nothing_is_written(tmp_path: Path) -> None:
    directory = tmp_path / "results"
    cache = ResultCache(directory, 10_000_000)
    cache.load()
    cache.put(key("a"), clip(0.5), {})
    (directory / f"{key('a')}.wav").write_bytes(b"RIFF garbage")
    assert cache.get(key("a")) is None
    assert len(cache) == 0 and cache.total_bytes == 0
    assert list(directory.iterdir()) == []  # deleted, not left to be indexed again at the next start

    (directory / f"{key('b')}.wav").mkdir()  # the disk refuses this one (as full or read-only would)
    assert not cache.put(key("b"), clip(0.5), {})
    assert cache.get(key("b")) is None and len(cache) == 0
    assert sorted(p.name for p in directory.iterdir()) == [f"{key('b')}.wav"]  # no temp file left behind

    off = ResultCache(tmp_path / "off", 0)
    off.load()
    assert not off.enabled
    assert not off.put(key("a"), clip(0.5), {})
    assert off.get(key("a")) is None
    assert not (tmp_path / "off").exists()
    with pytest.raises(ValueError, match="not a result key"):
        cache.get("../../etc/passwd")
