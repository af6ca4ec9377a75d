"""Shared by the client tests: the request they send, how a clip is checked, the gateway's 429 count."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.audio_decode import decode_audio
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import EngineProcess, assert_speech, make_reference

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


@contextmanager
def gateway_before(
    engine: EngineProcess, factory: pytest.TempPathFactory, **settings: float
) -> Iterator[GatewayServer]:
    """An in-process gateway with its own shared dir in front of `engine`."""
    with running_gateway(fast_settings(factory.mktemp("shared"), [engine.url], **settings)) as gw:
        yield gw


def reference_file(factory: pytest.TempPathFactory) -> Path:
    """A 4 s speech-like reference recording."""
    return make_reference(factory.mktemp("refs") / "ref.wav", seconds=4.0)
