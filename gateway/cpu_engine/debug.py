"""Debug routes, present only with `--debug-routes`: `GET /_stats` and `POST /_faults`.

They are left out of `/openapi.json`, so flavour detection by paths sees exactly the real engine's.
`StallProbes` (`--stall-probes`) makes side routes wait out a running mode-0 synthesis, as api_v2 does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

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


#: Routes that never wait: synthesis itself (it queues on the engine lock) and the debug routes.
_UNSTALLED = frozenset({"/tts", "/_stats", "/_faults"})


class StallProbes:
    """api_v2 synthesizes mode 0 on its event loop and answers nothing else meanwhile, not even
    `/openapi.json` (engine-protocol §6, §9): hold other routes until no mode-0 synthesis runs."""

    def __init__(self, app: ASGIApp, state: EngineState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in _UNSTALLED:
            await self._state.whole_idle.wait()
        await self._app(scope, receive, send)
