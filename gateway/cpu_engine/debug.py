"""Debug routes, present only with `--debug-routes`: `GET /_stats` and `POST /_faults`.

They are left out of `/openapi.json`, so flavour detection by paths sees exactly the real engine's.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from gateway.cpu_engine.faults import Fault
from gateway.cpu_engine.state import EngineState


class FaultChange(BaseModel):
    """A partial change: keys left out keep their value; `"fault": null` switches faults off."""

    fault: Fault | None = None
    delay: float | None = Field(default=None, ge=0)
    fault_after: int | None = Field(default=None, ge=0)


def add_debug_routes(app: FastAPI, state: EngineState) -> None:
    @app.get("/_stats", include_in_schema=False)
    async def stats() -> dict[str, Any]:
        """Counters for tests; `in_flight` counts from handler entry, before waiting for the engine lock."""
        return state.stats_snapshot()

    @app.post("/_faults", include_in_schema=False)
    async def faults(change: FaultChange) -> dict[str, Any]:
        state.faults.update(change.model_dump(include=change.model_fields_set))
        return state.faults.snapshot()
