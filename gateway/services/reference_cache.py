"""A bounded LRU of prepared references, so an upload seen before costs no audio work (issue 9, DESIGN §8)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from gateway.audio.intake import PreparedReference


@dataclass(frozen=True)
class StoredReference:
    """What a request needs of a prepared reference: no audio, so remembering thousands costs little."""

    sha256: str  # of the prepared WAV: the content address of `path`
    path: Path
    size: int  # bytes of the prepared WAV, so a file cut short since is not taken for it
    sample_rate: int
    duration: float
    trimmed_seconds: float
    warnings: tuple[str, ...]

    @classmethod
    def of(cls, ref: PreparedReference, path: Path) -> StoredReference:
        return cls(ref.sha256, path, len(ref.wav), ref.sample_rate, ref.duration, ref.trimmed_seconds, ref.warnings)


#: (sha256 of the uploaded bytes, trim_to_max, min_seconds, max_seconds, max_decode_seconds): everything
#: that decides what intake makes of an upload, so a different option set is never served another's result.
CacheKey = tuple[str, bool, float, float, float]


class ReferenceCache:
    """A bounded LRU of prepared references by upload hash and intake options.

    Entries are small metadata (the audio lives in the shared dir), so the bound is an entry count. Used
    from the event loop only: no lock needed.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, StoredReference] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> StoredReference | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: CacheKey, entry: StoredReference) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: CacheKey) -> None:
        self._entries.pop(key, None)
