"""Shared fixtures: one CPU engine (api_v2 flavour, debug routes on) for the whole session, references."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EngineProcess, make_reference, running_engine


@pytest.fixture(scope="session")
def engine_v2() -> Iterator[EngineProcess]:
    """A shared api_v2 engine in its start-up state. Tests must not switch its weights or set faults on
    it; those that need special flags or state start their own engine."""
    with running_engine("--debug-routes", flavor="v2") as engine:
        yield engine


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    """A 5 s speech-like mono 32 kHz WAV (median F0 120 Hz) inside the 3-10 s window."""
    return make_reference(tmp_path / "reference.wav", seconds=5.0)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked anyio) run on asyncio, like the gateway under uvicorn."""
    return "asyncio"


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s reference per test module (used by the pool tests)."""
    return make_reference(tmp_path_factory.mktemp("refs") / "ref.wav", seconds=4.0)
