"""The keys in force: GATEWAY_API_KEYS plus the keys file, reloaded when the file changes or on SIGHUP."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

from gateway.auth.keys import ApiKey, KeyFileError, Limits, digest_of, parse_env_keys, parse_file, with_defaults

log = logging.getLogger("gateway.auth")

#: the keys file is stat()ed at most this often (on requests), so an edit or a revoke applies within a second
STAT_INTERVAL = 1.0


class KeyRing:
    def __init__(
        self,
        path: Path | None,
        env_keys: str,
        defaults: Limits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.defaults = defaults
        self._clock = clock
        self._env = [with_defaults(key, defaults) for key in parse_env_keys(env_keys)]
        self._file: list[ApiKey] = []
        self._by_digest: dict[str, ApiKey] = {key.digest: key for key in self._env}
        self._signature: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        if path is not None:
            self._load(strict=True)

    @property
    def configured(self) -> bool:
        """True when keys are in force (even none yet: a configured but empty file lets nobody in)."""
        return self.path is not None or bool(self._env)

    @property
    def keys(self) -> list[ApiKey]:
        return [*self._env, *self._file]

    def lookup(self, raw: str) -> ApiKey | None:
        """The key whose hash matches the presented key's hash.

        Found by a dict lookup on the SHA-256 of what the client sent (O(1) with thousands of keys): its timing
        depends only on hashes of keys the client chose, which tell nothing about stored ones. The match is
        then confirmed with a constant-time comparison."""
        self._maybe_reload()
        digest = digest_of(raw)
        key = self._by_digest.get(digest)
        return key if key is not None and hmac.compare_digest(key.digest, digest) else None

    def reload(self) -> None:
        """Read the file again (SIGHUP); a broken file keeps the keys in force and says why in the log."""
        if self.path is not None:
            self._load(strict=False)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if self.path is None or now - self._checked < STAT_INTERVAL:
            return
        self._checked = now
        if self._stat() != self._signature:
            self._load(strict=False)

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self, *, strict: bool) -> None:
        assert self.path is not None
        signature = self._stat()
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            # safe either way: nobody gets in until the file appears (`sovits-gateway keys add` creates it)
            log.warning("keys file %s does not exist: no key is accepted until it does", self.path)
            self._file, self._signature = [], signature
            self._by_digest = {key.digest: key for key in self._env}
            return
        except (OSError, UnicodeDecodeError) as exc:
            if strict:
                raise KeyFileError(f"cannot read the keys file {self.path}: {exc}") from exc
            log.error("keys file %s not reloaded (the keys in force stay): %s", self.path, exc)
            self._signature = signature
            return
        try:
            keys = parse_file(text, self.path)
        except KeyFileError as exc:
            if strict:
                raise
            log.error("keys file not reloaded (the keys in force stay): %s", exc)
            self._signature = signature
            return
        self._file = [with_defaults(key, self.defaults) for key in keys]
        self._by_digest = {key.digest: key for key in self.keys}
        self._signature = signature
        log.info("keys file %s: %d keys", self.path, len(self._file))
