"""`sovits-gateway keys add|list|revoke`: manage the keys file (GATEWAY_API_KEYS_FILE or --file).

A running gateway picks changes up within a second (it watches the file's mtime) or at once on SIGHUP.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

from gateway.auth.keys import (
    SCOPES,
    ApiKey,
    KeyFileError,
    check_id,
    digest_of,
    format_line,
    new_key,
    parse_file,
)

_HEADER = (
    "# sovits-gateway API keys: ID sha256:<hash of the key> scope=synthesize|admin [rpm=N] [concurrency=N]\n"
    "# [audio_seconds_per_day=N] created=…   Keys themselves are never stored. Limits left out take the\n"
    "# GATEWAY_KEY_* defaults; 0 = unlimited. Manage with `sovits-gateway keys add|list|revoke`.\n"
)


def _keys_file(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    from gateway.settings import Settings

    path = Settings().api_keys_file
    if path is None:
        raise KeyFileError("no keys file: pass --file PATH or set GATEWAY_API_KEYS_FILE")
    return path


def _read(path: Path) -> list[ApiKey]:
    try:
        return parse_file(path.read_text(encoding="utf-8"), path)
    except FileNotFoundError:
        return []


def _write(path: Path, keys: list[ApiKey]) -> None:
    """Whole file to a temp file, then rename: a gateway reading at that moment sees the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _HEADER + "".join(format_line(key) + "\n" for key in keys)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:  # mkstemp: mode 0600 (only the owner reads hashes)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _add(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    keys = _read(path)
    key_id = check_id(args.name)
    if any(key.id == key_id for key in keys):
        raise KeyFileError(f"a key named {key_id!r} exists already in {path} (revoke it first)")
    raw = new_key()
    own: dict[str, float] = {}
    for name in ("rpm", "concurrency", "audio_seconds_per_day"):
        value = getattr(args, name)
        if value is not None:
            if value < 0:
                raise KeyFileError(f"--{name.replace('_', '-')} must be ≥ 0 (0: unlimited)")
            own[name] = value
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    keys.append(ApiKey(id=key_id, digest=digest_of(raw), scope=args.scope, own=own, created=created))
    _write(path, keys)
    print(raw)  # stdout: the key alone, so `KEY=$(sovits-gateway keys add ci)` works
    print(f"key {key_id!r} ({args.scope}) added to {path}; it is shown only this once", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    keys = _read(_keys_file(args))
    rows: list[tuple[str, ...]] = [("ID", "SCOPE", "RPM", "CONCURRENCY", "AUDIO_S/DAY", "CREATED")]
    for key in keys:
        limits = [f"{key.own[n]:g}" if n in key.own else "default" for n in
                  ("rpm", "concurrency", "audio_seconds_per_day")]
        rows.append((key.id, key.scope, *limits, key.created or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    keys = _read(path)
    kept = [key for key in keys if key.id != args.id]
    if len(kept) == len(keys):
        raise KeyFileError(f"no key {args.id!r} in {path}")
    _write(path, kept)
    print(f"key {args.id!r} revoked (a running gateway stops accepting it within a second)", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        code: int = args.keys_run(args)
        return code
    except (KeyFileError, OSError) as exc:
        print(f"sovits-gateway keys: {exc}", file=sys.stderr)
        return 1


def add_keys_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", help="the keys file (default: GATEWAY_API_KEYS_FILE)")
    keys = commands.add_parser("keys", help="API keys: add, list, revoke").add_subparsers(dest="keys_command",
                                                                                         required=True)
    add = keys.add_parser("add", parents=[common], help="create a key (printed once) under the id NAME")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--scope", choices=SCOPES, default="synthesize")
    add.add_argument("--rpm", type=int, help="requests per minute (0: unlimited; default GATEWAY_KEY_RPM)")
    add.add_argument("--concurrency", type=int, help="requests in flight (default GATEWAY_KEY_CONCURRENCY)")
    add.add_argument("--audio-seconds-per-day", type=float,
                     help="audio seconds per UTC day (default GATEWAY_KEY_AUDIO_SECONDS_PER_DAY)")
    add.set_defaults(run=_run, keys_run=_add)
    keys.add_parser("list", parents=[common], help="ids, scopes, limits (never keys)").set_defaults(
        run=_run, keys_run=_list)
    revoke = keys.add_parser("revoke", parents=[common], help="remove the key with this id")
    revoke.add_argument("id", metavar="ID")
    revoke.set_defaults(run=_run, keys_run=_revoke)
