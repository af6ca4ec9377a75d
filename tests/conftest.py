"""Shared fixtures: one CPU engine (api_v2 flavour, debug routes on) for the whole session, references.

The references come in three types, one fixture name each: `ref` (a file the engines read: Path),
`reference` (an upload's bytes) and `prepared` (what reference intake hands the voice store).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audio.intake import PreparedReference
from tests.redis_support import RedisServer, running_redis
from tests.support import EngineProcess, make_reference, prepared_reference, running_engine


@pytest.fixture(scope="session")
def engine_v2() -> Iterator[EngineProcess]:
    """A shared api_v2 engine in its start-up state. Tests must not switch its weights or set faults on
    it; those that need special flags or state start their own engine."""
    with running_engine("--debug-routes", flavor="v2") as engine:
        yield engine


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked anyio) run on asyncio, like the gateway under uvicorn."""
    return "asyncio"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port (tests restart or stop it at will)."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s reference file per test module, for requests that name a path the engine reads (the engine
    caches its pitch analysis per file, so one file per module saves ~0.5 s a request)."""
    return make_reference(tmp_path_factory.mktemp("refs") / "ref.wav", seconds=4.0)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a 5 s speech-like WAV (32 kHz mono, median F0 120 Hz), as a client uploads them."""
    return make_reference(tmp_path_factory.mktemp("upload") / "ref.wav", seconds=5.0).read_bytes()


@pytest.fixture(scope="session")
def prepared() -> PreparedReference:
    """A 3 s reference as reference intake hands it to the voice store (no engine involved)."""
    return prepared_reference()
