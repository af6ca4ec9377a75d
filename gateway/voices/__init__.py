"""Voice library: saved references reusable by id or name, stored as files in the shared directory."""

from gateway.voices.store import Voice, VoiceStore, is_voice_id, normalize_voice_name

__all__ = ["Voice", "VoiceStore", "is_voice_id", "normalize_voice_name"]
