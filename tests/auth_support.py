"""Helpers for API-key tests: a keys file written the way `sovits-gateway keys add` writes it."""

from __future__ import annotations

from pathlib import Path

from gateway.auth.keys import ApiKey, digest_of, format_line, new_key


def write_keys(path: Path, entries: dict[str, tuple[str, dict[str, float]]]) -> dict[str, str]:
    """entries: id → (scope, own limits). Returns id → the raw key."""
    raws = {key_id: new_key() for key_id in entries}
    lines = [format_line(ApiKey(id=key_id, digest=digest_of(raws[key_id]), scope=scope, own=own))
             for key_id, (scope, own) in entries.items()]
    path.write_text("# test keys\n" + "\n".join(lines) + "\n")
    return raws


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}
