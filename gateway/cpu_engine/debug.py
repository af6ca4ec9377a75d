"""Debug routes, present only with `--debug-routes`: `GET /_stats` and `POST /_faults`.

They are left out of `/openapi.json`, so flavour detection by paths sees exactly the real engine's.
`StallProbes` (`--stall-probes`) makes side routes wait out a running mode-0 synthesis, as api_v2 does.
"""

from __future__ import annotations

from collections import deque
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
    fault_count: int | None = Field(default=None, ge=1)  # null: no limit


#: How many `X-Request-ID`s `/_stats` remembers (the newest last).
_REQUEST_IDS_KEPT = 100


class RecordRequestIds:
    """Remember the `X-Request-ID` of each request that carries one (the gateway sends it on synthesis), so
    tests can see a client's request id reach the engine."""

    def __init__(self, app: ASGIApp, seen: deque[list[str]]) -> None:
        self._app = app
        self._seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers") or []:
                if name == b"x-request-id":
                    self._seen.append([scope["path"], value.decode("latin-1")])
        await self._app(scope, receive, send)


def add_debug_routes(app: FastAPI, state: EngineState) -> None:
    seen: deque[list[str]] = deque(maxlen=_REQUEST_IDS_KEPT)
    app.add_middleware(RecordRequestIds, seen=seen)

    @app.get("/_stats", include_in_schema=False)
    async def stats() -> dict[str, Any]:
        """Counters for tests; `in_flight` counts from handler entry, before waiting for the engine lock.
        `request_ids`: [path, X-Request-ID] of the latest requests that carried one."""
        return {**state.stats_snapshot(), "request_ids": list(seen)}

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
