"""Watch the file-system calls code makes, through Python's audit hooks (PEP 578), without mocking anything.

`recording()` collects the `open`, `os.rename` (also raised by `os.replace`), `os.link`, `os.remove` and
`tempfile.mkstemp` events raised while it is active, so a test can assert *how* a file was written (a
hidden temp file in the same directory, then an atomic rename) and not only what ended up on disk.
An audit hook cannot be removed; this one is installed on first use and stays idle outside `recording()`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WATCHED = frozenset({"open", "os.rename", "os.link", "os.remove", "tempfile.mkstemp"})


@dataclass(frozen=True)
class FsCall:
    event: str
    args: tuple[Any, ...]

    def path(self, index: int = 0) -> Path:
        """Argument `index` as an absolute Path (paths arrive as str, bytes or PathLike)."""
        return Path(os.fsdecode(self.args[index])).absolute()


_calls: list[FsCall] | None = None
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _calls is not None and event in _WATCHED:
        _calls.append(FsCall(event, args))


@contextmanager
def recording() -> Iterator[list[FsCall]]:
    """The watched file-system calls made inside the `with` block, in order."""
    global _calls, _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    calls: list[FsCall] = []
    _calls = calls
    try:
        yield calls
    finally:
        _calls = None


def calls_in(calls: list[FsCall], event: str, directory: Path) -> list[FsCall]:
    """The `event` calls whose first argument is a path directly in `directory` (an `open` of a file
    descriptor, as `os.fdopen` makes, has none)."""
    return [
        call
        for call in calls
        if call.event == event
        and isinstance(call.args[0], str | bytes | os.PathLike)
        and call.path().parent == directory.absolute()
    ]
