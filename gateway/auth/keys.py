"""API keys and the keys file: generation, hashing, one greppable line per key.

The file holds no key, only its SHA-256: keys are 256-bit random tokens, so a fast hash is enough (a slow
password hash protects guessable secrets, which these are not). A line:

    ci-bot sha256:9f86d0…0a08 scope=synthesize rpm=60 concurrency=2 audio_seconds_per_day=3600 created=2026-…

`#` starts a comment. A limit left out takes the GATEWAY_KEY_* default; 0 means unlimited.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

#: every key starts with this, so a leaked key is recognisable (secret scanners, logs, pastes)
KEY_PREFIX = "sk-sovits-"
SCOPES = ("synthesize", "admin")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LIMIT_FIELDS = ("rpm", "concurrency", "audio_seconds_per_day")


class KeyFileError(ValueError):
    """The keys file (or GATEWAY_API_KEYS) cannot be used as written."""


@dataclass(frozen=True)
class Limits:
    """Per-key limits; 0 means unlimited."""

    rpm: int = 0
    concurrency: int = 0
    audio_seconds_per_day: float = 0.0


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: str  # "sha256:<hex>"
    scope: str = "synthesize"
    #: the key's own limits as written (None: the GATEWAY_KEY_* default applies)
    own: dict[str, float] = field(default_factory=dict)
    created: str = ""
    limits: Limits = Limits()

    @property
    def admin(self) -> bool:
        return self.scope == "admin"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_of(raw: str) -> str:
    return "sha256:" + hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def check_id(key_id: str) -> str:
    if not _ID.match(key_id):
        raise KeyFileError(f"key id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-' (starting alphanumeric)")
    return key_id


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise KeyFileError(f"scope {scope!r}: use one of {', '.join(SCOPES)}")
    return scope


def with_defaults(key: ApiKey, defaults: Limits) -> ApiKey:
    """The key with its effective limits: its own where written, else the defaults."""
    own = key.own
    limits = Limits(
        rpm=int(own.get("rpm", defaults.rpm)),
        concurrency=int(own.get("concurrency", defaults.concurrency)),
        audio_seconds_per_day=float(own.get("audio_seconds_per_day", defaults.audio_seconds_per_day)),
    )
    return replace(key, limits=limits)


def parse_line(line: str, where: str) -> ApiKey | None:
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    tokens = text.split()
    if len(tokens) < 2 or not _DIGEST.match(tokens[1]):
        raise KeyFileError(f"{where}: expected 'ID sha256:<64 hex> [scope=…] [rpm=…] …'")
    key_id = check_id(tokens[0])
    scope, created, own = "synthesize", "", {}
    for token in tokens[2:]:
        name, sep, value = token.partition("=")
        if not sep:
            raise KeyFileError(f"{where}: {token!r} is not NAME=VALUE")
        if name == "scope":
            scope = check_scope(value)
        elif name == "created":
            created = value
        elif name in _LIMIT_FIELDS:
            try:
                number = float(value) if name == "audio_seconds_per_day" else int(value)
            except ValueError:
                number = -1
            if number < 0:
                raise KeyFileError(f"{where}: {name} must be a number ≥ 0 (0: unlimited)")
            own[name] = number
        else:
            raise KeyFileError(f"{where}: unknown field {name!r}")
    return ApiKey(id=key_id, digest=tokens[1], scope=scope, own=own, created=created)


def format_line(key: ApiKey) -> str:
    parts = [key.id, key.digest, f"scope={key.scope}"]
    parts += [f"{name}={key.own[name]:g}" for name in _LIMIT_FIELDS if name in key.own]
    if key.created:
        parts.append(f"created={key.created}")
    return " ".join(parts)


def parse_file(text: str, path: Path) -> list[ApiKey]:
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        key = parse_line(line, f"{path}:{number}")
        if key is None:
            continue
        if key.id in seen:
            raise KeyFileError(f"{path}:{number}: key id {key.id!r} appears twice")
        seen.add(key.id)
        keys.append(key)
    return keys


def parse_env_keys(value: str) -> list[ApiKey]:
    """GATEWAY_API_KEYS: comma-separated `KEY` (scope admin) or `KEY:synthesize`; ids are `env-` and 8 hex
    digits of the key's hash (stable across restarts, useless to an attacker)."""
    keys: list[ApiKey] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        raw, sep, scope = item.rpartition(":")
        if not sep or scope not in SCOPES:  # no scope suffix (a key may itself hold ':')
            raw, scope = item, "admin"
        if not raw:
            raise KeyFileError("GATEWAY_API_KEYS: an entry has an empty key")
        digest = digest_of(raw)
        keys.append(ApiKey(id=f"env-{digest[7:15]}", digest=digest, scope=scope))
    return keys
