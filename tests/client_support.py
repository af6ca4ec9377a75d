"""Shared by the client tests: the request they send, how a clip is checked, the gateway's 429 count."""

from __future__ import annotations

import re

import httpx

from tests.audio_decode import decode_audio
from tests.support import assert_speech

TEXT = "The quick brown fox jumps over the lazy dog."
PROMPT = {"text_language": "en", "prompt_text": "A reference recording.", "prompt_language": "en"}


def assert_clip(data: bytes, fmt: str = "wav", rate: int = 32000) -> float:
    """Decodes as `fmt` at `rate`, mono, 0.5-15 s, not silent; its length in seconds."""
    samples, got_rate = decode_audio(data, fmt)
    assert_speech(samples, got_rate, expected_rate=rate, min_seconds=0.5, max_seconds=15.0)
    return len(samples) / got_rate


def refusals(url: str, route: str = "/v1/voice-clone") -> int:
    """429s the gateway answered on `route` so far (from its own metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf'gateway_requests_total\{{route="{re.escape(route)}",status="429"\}} (\S+)', text)
    return int(float(found.group(1))) if found else 0
