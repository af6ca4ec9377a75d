"""Probes: healthy idle engines every `probe_interval`, down engines every `down_probe_interval`, and down
engines at once when a request finds no engine up (`revive_if_none_up`), so the first request after an engine
(re)starts is served instead of refused.

An engine is only probed while the pool has nothing in flight on it (api_v2 answers nothing while it
synthesizes, engine-protocol §6, §7): a probe that stalls behind our own request would mark a healthy
engine down. `probing` is set synchronously before any await, so no slot is handed out in between.

Each engine has at most one probe in flight, shared by the loop and every request waiting on it, and
requests probe a down engine at most once per REVIVE_GAP, however many ask (independent of
`down_probe_interval`, so a deployment that probes down engines rarely still serves its first request).

With several replicas (gateway/coord), a `gate` makes a probe take a lease like a request, so it never
lands on an engine that another replica is using, and at most one replica probes an engine per interval.

Logs: state changes only (down, up with flavour and version); a down engine's failing probes are debug.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Protocol

from gateway.engine.health import EngineState
from gateway.errors import EngineError

log = logging.getLogger("gateway.engine.pool")

#: Seconds between two on-demand probes of one down engine: a request waits at most this (plus the probe)
#: before it is refused, and a flood of requests costs the down engine at most 5 connections a second.
REVIVE_GAP = 0.2


class ProbeGate(Protocol):
    """Shares probes between replicas: a probe lease (None: busy elsewhere or probed lately; the engine's
    shared state has been taken in instead), and the probe's outcome for everyone."""

    async def claim_probe(self, engine: EngineState, *, force: bool) -> str | None: ...

    async def probe_done(
        self, engine: EngineState, token: str, *, healthy: bool, recovered: bool, reason: str
    ) -> None: ...


class Prober:
    """Runs probes for the pool; `changed(engine)` is called after each probe (publish + dispatch)."""

    def __init__(
        self,
        engines: Sequence[EngineState],
        interval: float,
        down_interval: float,
        changed: Callable[[EngineState], None],
        gate: ProbeGate | None = None,
    ) -> None:
        self._engines = engines
        self._gate = gate
        self._interval = interval
        self._down_interval = down_interval
        self._changed = changed
        self._running: dict[str, tuple[float, asyncio.Task[None]]] = {}  # url → (started, the one probe)
        self.kick = asyncio.Event()

    async def probe_all_first(self) -> None:
        await asyncio.gather(*(self._start(engine, first_contact=True) for engine in self._engines))

    async def loop(self) -> None:
        tick = min(self._interval, self._down_interval)
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self.kick.wait()
            self.kick.clear()
            now = time.monotonic()
            for engine in self._engines:
                # not awaited: an engine whose probe takes the whole connect_timeout (hung, or a host that
                # drops packets) must not hold back the probes of the others
                if engine.probe_due(now, self._interval, self._down_interval):
                    self._start(engine)

    async def revive_if_none_up(self, fits: Callable[[EngineState], bool], deadline: float) -> None:
        """No engine that `fits` is up: probe the revivable ones now, and return as soon as one is up, or
        each has had a probe that started after this call, or the deadline passes. (Not waiting for them
        all: a hung engine's probe lasts the whole connect_timeout.) The caller then takes a slot or is
        refused as before. A probe already in flight is joined, not repeated."""
        asked = time.monotonic()
        candidates = [engine for engine in self._engines if fits(engine)]
        if any(engine.selectable(asked) for engine in candidates):
            return
        pending = {asyncio.create_task(self._fresh_probe(e, asked)) for e in candidates if e.revivable(asked)}
        waiters = set(pending)
        try:
            async with asyncio.timeout_at(deadline):
                while pending and not any(engine.selectable(time.monotonic()) for engine in candidates):
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass  # out of time: the slot queue refuses with its usual 503
        finally:
            for waiter in waiters:  # only the waiting stops: a shared probe runs on (`_fresh_probe` shields it)
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def close(self) -> None:
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fresh_probe(self, engine: EngineState, asked: float) -> None:
        while engine.revivable(time.monotonic()) and not engine.in_flight:
            running = self._running.get(engine.url)
            if running is None or running[1].done():
                wait = engine.last_probe + REVIVE_GAP - time.monotonic()
                if wait > 0:  # rate limit: the probe that just failed says all there is to know for now
                    await asyncio.sleep(wait)
                    continue
                self._start(engine)
                running = self._running[engine.url]
            started, task = running
            try:
                await asyncio.shield(task)  # one waiter leaving must not cancel everyone's probe
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if task.cancelled() and current is not None and not current.cancelling():
                    return  # close() cancelled the probe, not our caller: the closed pool refuses next
                raise
            if started >= asked:
                return
            # that probe began before we asked: the engine may have come up since, so one more

    def _start(self, engine: EngineState, *, first_contact: bool = False) -> asyncio.Task[None]:
        """The engine's probe in flight, started now if none is: claimed (`probing`) before returning."""
        running = self._running.get(engine.url)
        if running is not None and not running[1].done():
            return running[1]
        engine.probing = True
        task = asyncio.create_task(self._probe(engine, first_contact=first_contact), name=f"probe {engine.url}")
        self._running[engine.url] = (time.monotonic(), task)
        task.add_done_callback(lambda done: self._forget(engine.url, done))
        return task

    def _forget(self, url: str, task: asyncio.Task[None]) -> None:
        if url in self._running and self._running[url][1] is task:
            del self._running[url]
        if not task.cancelled() and (error := task.exception()) is not None:  # a bug: the loop goes on
            log.error("engine %s probe failed unexpectedly", url, exc_info=error)

    async def _probe(self, engine: EngineState, *, first_contact: bool) -> None:
        """Probe an idle engine (`probing` is set, which keeps requests off it meanwhile)."""
        if engine.in_flight > 0:  # a request got there first: a probe now could only stall behind it
            engine.probing = False
            self._changed(engine)
            return
        token = await self._claim(engine, first_contact)
        if token == "":
            return
        client = engine.client
        was_flavor = client.info.flavor
        was_down = engine.down
        reason = "does not answer GET /openapi.json; is the engine process running?"
        try:
            healthy = await client.is_available()
            if healthy and (engine.down or client.info.flavor == "unknown"):
                await client.detect_flavor()  # it may have come back as another server
                if client.info.flavor == "v2":
                    await client.probe_version()
            elif healthy and client.info.flavor == "v2" and client.info.version is None:
                await client.probe_version()
        except EngineError as exc:
            log.debug("engine %s probe failed: %s", engine.label, exc)
            healthy, reason = False, f"probe failed: {exc.message}"
        finally:
            engine.probing = False
            engine.last_probe = time.monotonic()
        if healthy and engine.down:
            engine.recovered(first_contact=first_contact)
            flavor = client.info.flavor
            changed = f"; it was {was_flavor} before" if was_flavor not in ("unknown", flavor) else ""
            log.info("engine %s is up (%s, version %s%s)", engine.label, flavor, client.info.version, changed)
        elif not healthy:
            if not engine.down:
                log.warning("engine %s stopped answering probes; out of selection until it answers", engine.label)
            elif first_contact:
                log.warning("engine %s does not answer yet; it joins as soon as it does", engine.label)
            else:
                log.debug("engine %s is still down: %s", engine.label, reason)
            engine.probe_failed(reason)
        if token is not None:
            await self._shared(engine, token, healthy=healthy, recovered=healthy and was_down, reason=reason)
        self._changed(engine)

    async def _claim(self, engine: EngineState, first_contact: bool) -> str | None:
        """The gate's probe lease: None without a gate, "" when this replica must not probe now."""
        if self._gate is None:
            return None
        try:
            token = await self._gate.claim_probe(engine, force=first_contact)
        except EngineError as exc:  # Redis down: nothing to probe for (requests get 503 anyway)
            log.debug("engine %s probe not claimed: %s", engine.label, exc)
            token = None
        if token is None:
            engine.probing = False
            engine.last_probe = time.monotonic()
            self._changed(engine)
            return ""
        return token

    async def _shared(self, engine: EngineState, token: str, *, healthy: bool, recovered: bool, reason: str) -> None:
        assert self._gate is not None
        try:
            await self._gate.probe_done(engine, token, healthy=healthy, recovered=recovered, reason=reason)
        except EngineError as exc:  # the probe lease expires on its own
            log.debug("engine %s probe result not shared: %s", engine.label, exc)
