"""Engine slots as Redis leases, so several replicas share engines without ever putting two requests on one.

The decisions live in one Lua script (slots.lua), so each is atomic: a request's waiter joins one queue
shared by every replica (FIFO by arrival, interactive before batch, retries at the front), and whenever a
slot frees up the script grants it to the first waiter it suits, with the selection rules of selection.py.
A grant is a lease with a fencing token (a per-engine counter): it expires on its own unless this replica
renews it (every quarter lease, with a heartbeat that also proves the replica alive), so a replica that
dies gives its engines back after one lease; its queued waiters are dropped with its heartbeat.

Engine state is shared too: down, cooldown, loaded weights, flavour and version live in the engine's hash,
written by whoever learns them (an outcome, a probe, a weight switch) and read back with every answer.
Probes take a lease like a request (api_v2 answers nothing while it works: a probe must not stall behind
another replica's request), and at most one replica probes an engine per probe interval.

Redis down: every call raises RedisUnavailable (503, Retry-After); requests already on an engine finish.
Redis back: the link's reconnect hook renews this replica's leases (re-adding any Redis lost) before any
other command, and the script grants nothing for one lease after Redis starts empty or was unreachable for
half a lease, so every live replica has re-established its leases before an engine is handed out again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from gateway.coord.link import RedisLink, RedisUnavailable
from gateway.engine.health import EngineState
from gateway.engine.selection import Fits, Priority, SlotQueue, any_engine
from gateway.errors import EngineUnavailable, QueueFull
from gateway.metrics import Metrics
from gateway.settings import ModelWeights, Settings

log = logging.getLogger("gateway.coord")

_SCRIPT = (Path(__file__).with_name("slots.lua")).read_text(encoding="utf-8")
#: Seconds between reconnect attempts while Redis is away.
_DOWN_RETRY = 0.2


def _items(value: Any) -> list[Any]:
    """cjson encodes an empty Lua table as {}: read it as an empty list."""
    return value if isinstance(value, list) else []


class RedisSlots(SlotQueue):
    """SlotQueue's interface, with the queue and the slots in Redis (the pool cannot tell the difference)."""

    def __init__(
        self, settings: Settings, engines: Sequence[EngineState], metrics: Metrics | None, link: RedisLink
    ) -> None:
        super().__init__(settings, engines, metrics)
        self._link = link
        self._script = link.client.register_script(_SCRIPT)
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._queued: set[str] = set()  # waiters whose enqueue has returned: in Redis unless it lost them
        self._held: dict[str, list[str]] = {}  # engine URL → lease tokens this replica holds
        self._depths: tuple[int, int] = (0, 0)
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._releasing: set[asyncio.Task[Any]] = set()  # sent before this replica's next enqueue
        self._loops: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self.hold_remaining = 0.0
        link.on_reconnect(self._renew)

    @property
    def depth(self) -> int:
        return self._depths[0]

    @property
    def batch_depth(self) -> int:
        return self._depths[1]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._listen(), name="redis-grants"),
            asyncio.create_task(self._heartbeat(), name="redis-heartbeat"),
        ]
        try:
            async with asyncio.timeout(5):
                await self._subscribed.wait()
            await self._link.run(self._renew)
        except (RedisUnavailable, TimeoutError):
            log.warning("redis does not answer at start; requests get 503 until it does")

    def close(self) -> None:
        super().close()
        self._fail_pending(EngineUnavailable("the gateway is shutting down"))

    async def stop(self) -> None:
        """After the pool's calls have ended: send their releases, stop the loops."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

    # ------------------------------------------------------------------ the SlotQueue interface

    async def acquire(
        self,
        weights: ModelWeights | None,
        tried: frozenset[str],
        deadline: float,
        *,
        retry: bool,
        fits: Fits = any_engine,
        priority: Priority = "interactive",
    ) -> tuple[EngineState, float]:
        if self.closed:
            raise EngineUnavailable("the engine pool is closed")
        started = time.monotonic()
        if self._releasing:  # a slot this replica just freed goes to the queue first, not to a waiter later
            await asyncio.wait(set(self._releasing))
        budget = max(0.0, min(self._settings.max_queue_wait, deadline - started))
        waiter = f"{self._link.replica}:{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[waiter] = future
        wanted = weights or ModelWeights()
        try:
            answer = await self._call(
                "enqueue", waiter, self._link.replica, "\n".join(e.url for e in self._engines if fits(e)),
                "\n".join(sorted(tried)), wanted.gpt or "", wanted.sovits or "", int(budget * 1000),
                int(priority == "batch"), int(retry), self._settings.max_queue,
            )
            if "full" in answer:
                raise QueueFull(
                    f"all engines are busy and {answer['full']} requests are already waiting",
                    retry_after=self.estimated_wait(int(answer["full"]) + 1),
                )
            if "failed" in answer:
                raise self.no_engine_error(time.monotonic())
            if "granted" in answer:
                self._resolve(answer["granted"])
            self._queued.add(waiter)
            async with asyncio.timeout(budget):
                grant = await future
        except BaseException as exc:
            self._pending.pop(waiter, None)
            self._queued.discard(waiter)
            if future.done() and not future.cancelled():
                future.exception()  # seen: _fail_pending may have set this very error on it
            future.cancel()
            if not isinstance(exc, QueueFull):  # gave up: a slot granted meanwhile goes back
                self._spawn(self._call("leave", waiter))
            if isinstance(exc, TimeoutError):
                raise EngineUnavailable(
                    f"no engine slot became free within {budget:.1f}s",
                    code="queue_timeout",
                    retry_after=self.estimated_wait(self.depth + 1),
                ) from None
            raise
        self._pending.pop(waiter, None)
        self._queued.discard(waiter)
        engine = self._taken(grant)
        waited = time.monotonic() - started
        self._observe_wait(waited)
        return engine, waited

    def release(self, engine: EngineState) -> None:
        engine.in_flight -= 1
        self._in_flight_changed(engine)
        tokens = self._held.get(engine.url)
        if not tokens:
            return
        token = tokens.pop()
        now = time.monotonic()
        weights = engine.weights or ModelWeights()
        task = self._spawn(self._call(
            "release", engine.url, token, int(engine.down), int(engine.cooldown_remaining(now) * 1000),
            engine.last_error or "", 1, int(engine.weights_known), weights.gpt or "", weights.sovits or "",
        ))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def dispatch(self) -> None:
        if not self.closed:
            self._spawn(self._call("dispatch"))

    async def switching_weights(self, engine: EngineState) -> None:
        """Mark the engine's weights unknown in Redis before a switch: if this replica dies mid-switch,
        the next holder reloads instead of trusting weights that may be half-loaded."""
        token = (self._held.get(engine.url) or [""])[-1]
        await self._call("weights", engine.url, token, 0, "", "")

    # ------------------------------------------------------------------ probes (Prober's gate)

    async def claim_probe(self, engine: EngineState, *, force: bool) -> str | None:
        """A probe lease when the engine is idle everywhere and due; None (its state absorbed) otherwise."""
        interval_ms = int(self._settings.probe_interval * 900)
        answer = await self._call("probe", engine.url, self._link.replica, interval_ms, int(force))
        token = answer.get("token")
        return str(token) if token else None

    async def probe_done(self, engine: EngineState, token: str, *, healthy: bool, recovered: bool,
                         reason: str) -> None:
        info = engine.client.info
        flavor = info.flavor if info.flavor != "unknown" else ""
        await self._call("probed", engine.url, token, int(healthy), int(recovered), flavor, info.version or "",
                         "" if healthy else reason)

    # ------------------------------------------------------------------ Redis calls and answers

    async def _call(self, command: str, *args: Any) -> dict[str, Any]:
        try:
            return await self._link.run(lambda: self._raw(command, *args))
        except RedisUnavailable as exc:
            self._fail_pending(exc)
            raise

    async def _raw(self, command: str, *args: Any) -> dict[str, Any]:
        reply = await self._script(args=[self._link.prefix, command, self._lease_ms, *args])
        answer: dict[str, Any] = json.loads(reply)
        self._absorb(answer)
        return answer

    def _absorb(self, answer: dict[str, Any]) -> None:
        """Take the shared engine state into the local EngineStates (what /readyz, probes and Retry-After read)."""
        depths = _items(answer.get("depths"))
        if len(depths) == 2:
            self._depths = (int(depths[0]), int(depths[1]))
            self._queue_changed()
        self.hold_remaining = float(answer.get("hold_ms", 0)) / 1000
        now = time.monotonic()
        by_url = {engine.url: engine for engine in self._engines}
        for state in _items(answer.get("engines")):
            engine = by_url.get(state["url"])
            if engine is None:
                continue
            engine.down = bool(state["down"])
            engine.cooldown_until = now + state["cool_ms"] / 1000 if state["cool_ms"] else 0.0
            engine.last_error = state["error"] or engine.last_error
            if not engine.in_flight:  # mid-request, our own view of its weights is the newer one
                self._take_weights(engine, state)
            if state["flavor"] and engine.client.info.flavor in ("unknown", state["flavor"]):
                engine.client.adopt(state["flavor"], state["version"] or None)

    @staticmethod
    def _take_weights(engine: EngineState, state: dict[str, Any]) -> None:
        engine.weights_known = bool(state["wknown"])
        gpt, sovits = state["wgpt"] or None, state["wsov"] or None
        engine.weights = ModelWeights(gpt=gpt, sovits=sovits) if gpt or sovits else None

    def _resolve(self, grant: dict[str, Any]) -> None:
        future = self._pending.get(grant["id"])
        if future is None or future.done():
            return  # already taken, or its waiter left (the leave script hands the slot back)
        if grant.get("failed"):
            future.set_exception(self.no_engine_error(time.monotonic()))
        else:
            future.set_result(grant)

    def _taken(self, grant: dict[str, Any]) -> EngineState:
        engine = next(e for e in self._engines if e.url == grant["url"])
        self._held.setdefault(engine.url, []).append(grant["token"])
        if not engine.in_flight:
            self._take_weights(engine, grant)
        engine.in_flight += 1
        self._in_flight_changed(engine)
        return engine

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    # ------------------------------------------------------------------ background loops

    async def _renew(self) -> None:
        """Heartbeat: this replica is alive, its leases are renewed (re-added if Redis lost them), its
        engines registered, and grants or losses of its waiters that pub/sub did not deliver are applied."""
        held = "\n".join(f"{url}\n{token}" for url, tokens in self._held.items() for token in tokens)
        engines = "\n".join(f"{engine.url}\n{engine.concurrency}" for engine in self._engines)
        answer = await self._raw("renew", self._link.replica, held, "\n".join(self._queued), engines)
        for grant in _items(answer.get("resolved")):
            self._resolve(grant)
        for waiter in _items(answer.get("lost")):
            future = self._pending.get(waiter)
            if future is not None and not future.done():
                future.set_exception(RedisUnavailable("the queue was lost in a Redis restart; retry"))

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._link.run(self._renew)
            except RedisUnavailable:
                self._fail_pending(RedisUnavailable("Redis stopped answering while this request waited"))
            except RedisError as exc:  # a script error is a bug of ours: say so, keep beating
                log.error("redis heartbeat failed: %s", exc)
            await asyncio.sleep(self._settings.lease_seconds / 4 if self._link.up else _DOWN_RETRY)

    async def _listen(self) -> None:
        """Grants for this replica's waiters, pushed by whichever replica's script made them."""
        channel = self._link.key("grants", self._link.replica)
        while True:
            pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._resolve(json.loads(message["data"]))
            except (RedisError, OSError):
                await asyncio.sleep(_DOWN_RETRY)  # the heartbeat's renew picks up what was missed
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
