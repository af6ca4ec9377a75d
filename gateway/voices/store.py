"""The voice library: named, reusable references kept as one JSON file per voice in the shared dir.

Layout under `root` (shared by every gateway process, possibly on NFS):

    voice_<16 hex>.json   one voice record, replaced atomically (temp file + os.replace)
    names/<sha256>        name claim: sha256 of the normalised, case-folded name, holding the voice id
    default_voice         the default voice id (atomic marker; may point at a deleted voice)

References live in `refs_dir/<sha256>.wav`, content-addressed and shared, written by
`gateway.audio.intake.store_reference`; deleting a voice never deletes its reference.

Safety rules: an id is matched against a strict regex before any path is built from it, so no
client string reaches the filesystem; a name is taken by creating its claim file, which succeeds in
exactly one process; a create that fails after claiming releases the claim, and a claim left by a
crashed process (no voice file, older than `stale_claim_seconds`) is reclaimed by the next create.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import re
import secrets
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.audio.intake import PreparedReference, store_reference
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.settings import ModelWeights
from gateway.voices.files import (
    claim_age_seconds,
    claim_holder,
    read_text_or_none,
    release_claim,
    sweep_stale_temps,
    try_claim,
    write_atomic,
)

log = logging.getLogger("gateway.voices")

VOICE_ID_PREFIX = "voice_"
MAX_NAME_LENGTH = 64
_VOICE_ID = re.compile(r"voice_[0-9a-f]{16}")
# Categories a name may not contain: controls (incl. tab/newline), lone surrogates, line/para separators, and
# format characters (Cf: zero-width spaces and joiners, bidi overrides and isolates U+202A–202E, U+2066–2069,
# the BOM): a name that renders like another one, or reverses the text after it, misleads whoever reads a list.
_FORBIDDEN_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHOWN_CHARS = 80


class Voice(BaseModel):
    """A saved voice; also the JSON the API returns. `is_default` is derived on read, never stored."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=r"^voice_[0-9a-f]{16}$")
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    prompt_text: str
    prompt_language: str
    description: str | None = None
    reference_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    reference_duration: float = Field(gt=0)
    reference_sample_rate: int = Field(gt=0)
    #: extra references of the same voice (refs_dir/<sha256>.wav, like the main one): api_v2 fuses their timbre
    aux_reference_sha256: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(default_factory=list)
    weights: ModelWeights | None = None
    created_at: datetime
    is_default: bool = False

    @field_validator("created_at")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_voice_id(value: str) -> bool:
    """True when `value` is shaped like a voice id (and therefore safe to build a path from)."""
    return isinstance(value, str) and _VOICE_ID.fullmatch(value) is not None


def new_voice_id() -> str:
    return VOICE_ID_PREFIX + secrets.token_hex(8)


def normalize_voice_name(name: str) -> str:
    """The name as stored (surrounding whitespace stripped), or InvalidInput saying what is wrong."""
    if not isinstance(name, str):
        raise InvalidInput("voice name must be a string", code="invalid_voice_name")
    cleaned = name.strip()
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH:
        raise InvalidInput(
            f"voice name must be 1–{MAX_NAME_LENGTH} characters after trimming spaces; got {len(cleaned)}",
            code="invalid_voice_name",
        )
    bad = next((char for char in cleaned if unicodedata.category(char) in _FORBIDDEN_NAME_CATEGORIES), None)
    if bad is not None:
        raise InvalidInput(
            f"voice name must not contain control, invisible or bidirectional-control characters (U+{ord(bad):04X})",
            code="invalid_voice_name",
        )
    if is_voice_id(cleaned.lower()):
        raise InvalidInput(
            "voice name must not look like a voice id (voice_ + 16 hex digits)", code="invalid_voice_name"
        )
    return cleaned


def name_key(name: str) -> str:
    """Case- and compatibility-insensitive key of a name ("Alice", "ALICE", "Ａｌｉｃｅ" collide)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()


def _shown(value: object) -> str:
    """A client-supplied value safe to echo in an error message (escaped, bounded)."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def _not_found(what: str) -> NotFound:
    return NotFound(f"no voice {what}", code="voice_not_found")


class VoiceStore:
    """File-backed voice library, safe for several gateway processes sharing one directory."""

    def __init__(self, root: Path, refs_dir: Path, *, stale_claim_seconds: float = 60.0) -> None:
        self.root = Path(root)
        self.refs_dir = Path(refs_dir)
        self._names_dir = self.root / "names"
        self._default_marker = self.root / "default_voice"
        self._stale_claim_seconds = stale_claim_seconds
        self._names_dir.mkdir(parents=True, exist_ok=True)
        self.refs_dir.mkdir(parents=True, exist_ok=True)

    # --- writes

    def create(
        self,
        *,
        name: str,
        reference: PreparedReference,
        prompt_text: str,
        prompt_language: str,
        description: str | None = None,
        weights: ModelWeights | None = None,
        aux_references: builtins.list[PreparedReference] | None = None,
    ) -> Voice:
        """Save a new voice. Conflict(voice_name_taken) if the name is in use, in any process."""
        aux = aux_references or []
        clean_name = normalize_voice_name(name)
        try:
            voice = Voice(
                id=new_voice_id(),
                name=clean_name,
                prompt_text=prompt_text,
                prompt_language=prompt_language,
                description=description,
                reference_sha256=reference.sha256,
                reference_duration=reference.duration,
                reference_sample_rate=reference.sample_rate,
                aux_reference_sha256=[ref.sha256 for ref in aux],
                weights=weights,
                created_at=datetime.now(UTC),
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "voice"
            raise InvalidInput(f"{field}: {first['msg']}", code="invalid_voice") from exc

        claim = self._claim_path(clean_name)
        if not self._claim_name(claim, voice.id):
            raise Conflict(f"a voice named {_shown(clean_name)} already exists", code="voice_name_taken")
        try:
            for ref in (reference, *aux):
                store_reference(ref, self.refs_dir)
            write_atomic(self._voice_path(voice.id), voice.model_dump_json(exclude={"is_default"}).encode())
        except BaseException:
            self._release_or_leave_stale(claim, voice.id)
            raise
        log.info("created voice %s (%s)", voice.id, voice.name)
        return voice

    def delete(self, voice_id: str) -> None:
        """Remove the voice and free its name. The reference file stays: others may share it."""
        voice = self.get(voice_id)
        try:
            self._voice_path(voice.id).unlink()
        except FileNotFoundError:
            raise _not_found(f"with id {_shown(voice_id)}") from None
        self._release_or_leave_stale(self._claim_path(voice.name), voice.id)  # the voice is gone either way
        log.info("deleted voice %s (%s)", voice.id, voice.name)

    def set_default(self, voice_id: str | None) -> None:
        """Mark a voice as the default (None clears it); unknown id → NotFound."""
        if voice_id is None:
            self._default_marker.unlink(missing_ok=True)
            return
        voice = self.get(voice_id)
        write_atomic(self._default_marker, voice.id.encode("ascii"))

    def sweep_stale_temps(self) -> builtins.list[Path]:
        """Remove temp files left by writers that died mid-write (run at startup); the removed paths."""
        return [
            path
            for directory in (self.root, self._names_dir, self.refs_dir)
            for path in sweep_stale_temps(directory)
        ]

    # --- reads

    def list(self) -> builtins.list[Voice]:
        """Every readable voice, oldest first. Corrupt or foreign files are skipped with a warning."""
        default_id = self._default_id()
        voices: builtins.list[Voice] = []
        for path in self.root.glob(f"{VOICE_ID_PREFIX}*.json"):
            voice_id = path.name.removesuffix(".json")
            if not is_voice_id(voice_id):
                continue
            voice = self._load(voice_id)
            if voice is not None:
                voices.append(voice.model_copy(update={"is_default": voice.id == default_id}))
        voices.sort(key=lambda voice: (voice.created_at, voice.id))
        return voices

    def get(self, voice_id: str) -> Voice:
        """The voice with this id; NotFound for unknown or malformed ids (never an OSError)."""
        if not is_voice_id(voice_id):
            raise _not_found(f"with id {_shown(voice_id)}")
        voice = self._load(voice_id)
        if voice is None:
            raise _not_found(f"with id {_shown(voice_id)}")
        return voice.model_copy(update={"is_default": voice.id == self._default_id()})

    def resolve(self, id_or_name: str) -> Voice:
        """The voice with this id, else with this name (case-insensitive); NotFound otherwise."""
        if is_voice_id(id_or_name):
            return self.get(id_or_name)
        try:
            clean_name = normalize_voice_name(id_or_name)
        except InvalidInput:
            raise _not_found(f"with id or name {_shown(id_or_name)}") from None
        holder = claim_holder(self._claim_path(clean_name))
        if holder and is_voice_id(holder):
            voice = self._load(holder)
            if voice is not None and name_key(voice.name) == name_key(clean_name):
                return voice.model_copy(update={"is_default": voice.id == self._default_id()})
        raise _not_found(f"with id or name {_shown(id_or_name)}")

    def default(self) -> Voice | None:
        """The default voice, or None when unset or when that voice has been deleted."""
        voice_id = self._default_id()
        if voice_id is None:
            return None
        voice = self._load(voice_id)
        return None if voice is None else voice.model_copy(update={"is_default": True})

    def reference_path(self, voice: Voice) -> Path:
        """Where the voice's reference WAV lives (refs_dir/<sha256>.wav); creates nothing."""
        return self.refs_dir / f"{voice.reference_sha256}.wav"

    def aux_reference_paths(self, voice: Voice) -> builtins.list[Path]:
        """Where the voice's extra references live; creates nothing."""
        return [self.refs_dir / f"{sha}.wav" for sha in voice.aux_reference_sha256]

    # --- internals

    def _voice_path(self, voice_id: str) -> Path:
        if not is_voice_id(voice_id):  # the one gate every voice path passes through
            raise _not_found(f"with id {_shown(voice_id)}")
        return self.root / f"{voice_id}.json"

    def _claim_path(self, clean_name: str) -> Path:
        return self._names_dir / name_key(clean_name)

    def _load(self, voice_id: str) -> Voice | None:
        """Read one record; None when missing (quietly) or unreadable/corrupt (with a warning)."""
        path = self._voice_path(voice_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("skipping unreadable voice file %s: %s", path.name, exc)
            return None
        try:
            voice = Voice.model_validate_json(data)
        except ValidationError as exc:
            log.warning("skipping corrupt voice file %s: %d validation error(s)", path.name, exc.error_count())
            return None
        if voice.id != voice_id:
            log.warning("skipping voice file %s: it holds id %s", path.name, voice.id)
            return None
        return voice

    def _default_id(self) -> str | None:
        text = read_text_or_none(self._default_marker)
        voice_id = text.strip() if text else ""
        return voice_id if is_voice_id(voice_id) else None

    def _release_or_leave_stale(self, claim: Path, voice_id: str) -> None:
        """Free a name; if the directory refuses even that, the claim (with no voice file) is reclaimed once
        stale, and the caller's own error, not this one, is what gets reported."""
        try:
            release_claim(claim, voice_id)
        except OSError as exc:
            log.warning("cannot release name claim %s of %s (reclaimed once stale): %s", claim, voice_id, exc)

    def _claim_name(self, claim: Path, voice_id: str) -> bool:
        """Take the name for `voice_id`; reclaim it once if its holder crashed before saving."""
        if try_claim(claim, voice_id):
            return True
        return self._reclaim_if_stale(claim) and try_claim(claim, voice_id)

    def _reclaim_if_stale(self, claim: Path) -> bool:
        """Release a claim whose voice file never appeared (crashed create or delete); True if freed."""
        holder = claim_holder(claim)
        if holder is None:
            return True  # released since our attempt
        if is_voice_id(holder) and self._voice_path(holder).exists():
            return False
        age = claim_age_seconds(claim)
        if age is None:
            return True
        if age < self._stale_claim_seconds:
            return False  # probably a create in progress in another process
        log.warning("reclaiming name claim %s left by %r without a voice file", claim.name, holder)
        release_claim(claim, holder)
        return True
