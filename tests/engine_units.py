"""Real pool objects for the fast engine unit tests: EngineState over VoiceCloner clients that never do I/O."""

from __future__ import annotations

from typing import Any

from gateway.engine.client import VoiceCloner
from gateway.engine.health import EngineState
from gateway.engine.types import EngineInfo, SynthesisRequest
from gateway.errors import (
    EngineBadResponse,
    EngineError,
)
from gateway.settings import Settings

FAR = 10_000.0  # seconds: a cooldown that cannot end (or has long ended) during a test


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "engines": ["http://a"],
        "cooldown_seconds": 5.0,
        "cooldown_max_seconds": 60.0,
        "cooldown_after_failures": 2,
        "probe_interval": 5.0,
        "max_queue": 4,
        "max_queue_wait": 30.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


SETTINGS = make_settings()


_CLIENTS: dict[str, VoiceCloner] = {}


def make_engine(
    url: str = "http://a", concurrency: int = 1, *, flavor: str = "v2", version: str | None = "v2", down: bool = False
) -> EngineState:
    """A healthy (unless `down`) engine of the given flavour/version; its client is never used.

    Clients are shared per URL (building one costs ~0.1 s of TLS set-up), so engines alive at the same
    time need distinct URLs when their flavour or version differs."""
    client = _CLIENTS.get(url) or _CLIENTS.setdefault(url, VoiceCloner(url, SETTINGS, url.rsplit("/", 1)[-1]))
    client.info = EngineInfo(url=client.url, id=client.id, flavor=flavor, version=version)
    return EngineState(client, concurrency, down=down)


def engines(count: int, concurrency: int = 1) -> list[EngineState]:
    return [make_engine(f"http://e{index}", concurrency) for index in range(count)]


def request(**fields: Any) -> SynthesisRequest:
    values: dict[str, Any] = {"text": "hi", "text_language": "en", "reference_path": "/r.wav",
                              "prompt_text": "words", "prompt_language": "en", **fields}
    return SynthesisRequest(**values)


def failure(kind: type[EngineError] = EngineBadResponse, engine: str | None = "http://a", **kw: Any) -> EngineError:
    return kind("boom", engine=engine, **kw)
