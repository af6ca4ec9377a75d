"""The probe loop: idle engines are probed every `probe_interval`; a down engine right after its cooldown.

An engine is only probed while the pool has nothing in flight on it (api_v2 answers nothing while it
synthesizes, engine-protocol §6, §7): a probe that stalls behind our own request would mark a healthy
engine down. `probing` is set synchronously before any await, so no slot is handed out in between.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import suppress

from gateway.engine.health import EngineState
from gateway.errors import EngineError

log = logging.getLogger("gateway.engine.pool")


class Prober:
    """Runs probes for the pool; `changed(engine)` is called after each probe (publish + dispatch)."""

    def __init__(self, engines: Sequence[EngineState], interval: float, changed: Callable[[EngineState], None]) -> None:
        self._engines = engines
        self._interval = interval
        self._changed = changed
        self.kick = asyncio.Event()

    async def probe_all_first(self) -> None:
        for engine in self._engines:
            engine.probing = True
        await asyncio.gather(*(self.probe(engine, first_contact=True) for engine in self._engines))

    async def loop(self) -> None:
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self.kick.wait()
            self.kick.clear()
            now = time.monotonic()
            due = [engine for engine in self._engines if self._due(engine, now)]
            for engine in due:  # claim them now: no slot may be handed out before the probe runs
                engine.probing = True
            try:
                await asyncio.gather(*(self.probe(engine) for engine in due))
            except Exception:  # the loop must outlive any bug in one probe
                log.exception("engine probe failed unexpectedly")

    def _due(self, engine: EngineState, now: float) -> bool:
        if engine.in_flight or engine.probing:
            return False
        cooled_and_unchecked = (
            engine.down and engine.cooldown_until <= now and engine.last_probe < engine.cooldown_until
        )
        return cooled_and_unchecked or now - engine.last_probe >= 0.9 * self._interval

    async def probe(self, engine: EngineState, *, first_contact: bool = False) -> None:
        """Probe an idle engine (the caller has set `probing`, which keeps requests off it meanwhile)."""
        engine.probing = True
        if engine.in_flight > 0:  # a request got there first: a probe now could only stall behind it
            engine.probing = False
            self._changed(engine)
            return
        client = engine.client
        try:
            healthy = await client.is_available()
            if healthy and engine.down:
                await client.detect_flavor()  # it may have come back as another server
                if client.info.flavor == "v2":
                    await client.probe_version()
            elif healthy and client.info.flavor == "v2" and client.info.version is None:
                await client.probe_version()
        except EngineError as exc:
            log.info("engine %s probe failed: %s", engine.url, exc)
            healthy = False
        finally:
            engine.probing = False
            engine.last_probe = time.monotonic()
        if healthy and engine.down:
            engine.recovered(first_contact=first_contact)
            log.info("engine %s is up (%s, version %s)", engine.url, client.info.flavor, client.info.version)
        elif not healthy:
            if not engine.down:
                log.warning("engine %s stopped answering probes; out of selection until it answers", engine.url)
            engine.probe_failed("does not answer GET /openapi.json; is the engine process running?")
        self._changed(engine)
