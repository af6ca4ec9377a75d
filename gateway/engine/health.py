"""Per-engine bookkeeping for the pool: slots, consecutive failures, cooldowns, loaded weights.

Health rules (LiteLLM-style cooldowns, peers.md §2):
- success → the failure count and the cooldown doubling reset;
- EngineBadResponse (500, silence, truncated body) → one more consecutive failure; at
  `cooldown_after_failures` the engine leaves selection for `cooldown_seconds`, doubling on each repeat
  up to `cooldown_max_seconds`;
- EngineUnavailable (refused, reset, closed before answering) → marked down, no cooldown: the process is
  gone or restarting, and it is back exactly when it answers again, which the probes find out (down
  engines are probed every `down_probe_interval`, and at once when a request finds no engine up);
- EngineTimeout → cooldown at once *and* marked down: the engine is hung, so it only comes back after its
  cooldown *and* a probe that sees it answer (api_v2 answers nothing while busy, so a successful probe
  also proves the hung synthesis has ended); the doubling cooldown keeps an engine that hangs again and
  again from costing each request a whole read timeout;
- EngineRejected → no change: the engine worked, the request was bad. Every engine answer that blames
  the request (its 4xx, protocol_v2's table) is an EngineRejected, so a client sending malformed requests
  can never take an engine out of selection.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from gateway.engine.client import VoiceCloner
from gateway.errors import EngineBadResponse, EngineError, EngineTimeout, EngineUnavailable
from gateway.settings import ModelWeights, Settings

#: How far back failures count when breaking ties between equally busy engines.
RECENT_FAILURE_WINDOW = 60.0

#: What one request outcome says about the engine (see `judge`).
Verdict = Literal["success", "silent", "refused", "failed", "gone", "hung"]


def judge(error: BaseException | None) -> Verdict:
    """Classify an outcome for the engine's health, as a pure function so every branch is unit-tested.

    success: resets the failure count and the doubling; silent: nothing about the engine (cancellation,
    a pool-level error naming no engine); refused: the engine worked, the request was bad (no count);
    failed: a bad answer (counts; cools after `cooldown_after_failures` in a row); gone: unreachable
    (counts, marks down: a probe brings it back); hung: a timeout (counts, marks down and cools at once).
    """
    if error is None:
        return "success"
    if not isinstance(error, EngineError) or error.engine is None:
        return "silent"
    if isinstance(error, EngineTimeout):
        return "hung"
    if isinstance(error, EngineUnavailable):
        return "gone"
    if isinstance(error, EngineBadResponse):
        return "failed"
    return "refused"


def cooldown_length(settings: Settings, cooldowns_in_a_row: int) -> float:
    """Base `cooldown_seconds`, doubled for each cooldown in a row before this one, capped at the max."""
    return min(settings.cooldown_seconds * 2.0**cooldowns_in_a_row, settings.cooldown_max_seconds)


@dataclass
class EngineState:
    """One engine as the pool sees it. Times are event-loop (monotonic) seconds."""

    client: VoiceCloner
    concurrency: int
    in_flight: int = 0
    probing: bool = False
    down: bool = True  # until the first probe has seen it answer
    consecutive_failures: int = 0
    cooldowns_in_a_row: int = 0
    cooldown_until: float = 0.0
    last_probe: float = 0.0
    # What the engine has loaded: None = its start-up weights. `weights_known` is False after an
    # interrupted switch or a recovery from down (it may have restarted, or not): then any request
    # that names weights loads them again.
    weights: ModelWeights | None = None
    weights_known: bool = True
    recent_failures: deque[float] = field(default_factory=deque)
    last_error: str | None = None  # shown in /readyz and in "no engine available" answers

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def id(self) -> str:
        """`e0`, `e1`, ...: how clients see this engine (its URL is for operators only)."""
        return self.client.id

    @property
    def label(self) -> str:
        """For logs: the id clients quote, and the URL operators need."""
        return f"{self.client.id} ({self.client.url})"

    def cooldown_remaining(self, now: float) -> float:
        return max(0.0, self.cooldown_until - now)

    def selectable(self, now: float) -> bool:
        """Healthy: may receive requests (possibly after the ones in flight)."""
        return not self.down and self.cooldown_until <= now

    def revivable(self, now: float) -> bool:
        """Down and not cooling: a probe that sees it answer brings it back, so a request that finds no
        engine up probes it first. (A cooling engine is not: its cooldown must end either way.)"""
        return self.down and self.cooldown_until <= now

    def probe_due(self, now: float, interval: float, down_interval: float) -> bool:
        """Should the probe loop probe this engine now? Never while a request is on it (api_v2 answers
        nothing while busy: the probe would stall behind our own request and mark it down). A revivable
        engine every `down_interval` and right after its cooldown ends; any other every `interval`.
        (0.9: the loop wakes on its own period, and a probe that is a hair early is fine.)"""
        if self.in_flight or self.probing:
            return False
        if self.revivable(now):
            return self.last_probe < self.cooldown_until or now - self.last_probe >= 0.9 * down_interval
        return now - self.last_probe >= 0.9 * interval

    def has_free_slot(self, now: float) -> bool:
        return self.selectable(now) and not self.probing and self.in_flight < self.concurrency

    def state(self, now: float) -> str:
        if self.cooldown_until > now:
            return "cooling_down"
        if self.down:
            return "down"
        return "busy" if self.in_flight >= self.concurrency else "ready"

    def recent_failure_count(self, now: float) -> int:
        while self.recent_failures and now - self.recent_failures[0] > RECENT_FAILURE_WINDOW:
            self.recent_failures.popleft()
        return len(self.recent_failures)

    # ------------------------------------------------------------------ weights

    def matches(self, wanted: ModelWeights | None) -> bool:
        """True when a request for `wanted` can run here without a weight switch."""
        if wanted is None or (wanted.gpt is None and wanted.sovits is None):
            return True
        if not self.weights_known or self.weights is None:
            return False
        return all(
            getattr(wanted, part) is None or getattr(wanted, part) == getattr(self.weights, part)
            for part in ("gpt", "sovits")
        )

    def switched_to(self, wanted: ModelWeights) -> None:
        base = self.weights if self.weights_known and self.weights is not None else ModelWeights()
        self.weights = ModelWeights(gpt=wanted.gpt or base.gpt, sovits=wanted.sovits or base.sovits)
        self.weights_known = True

    # ------------------------------------------------------------------ outcomes

    def record(self, error: BaseException | None, settings: Settings, now: float) -> float | None:
        """Apply one request outcome (classified by `judge`); returns the cooldown length when one starts."""
        verdict = judge(error)
        if verdict == "success":
            self.consecutive_failures = 0
            self.cooldowns_in_a_row = 0
            return None
        if verdict == "silent":
            return None
        self.last_error = cast(EngineError, error).message  # judge: an EngineError naming this engine
        if verdict == "refused":
            return None
        self.recent_failures.append(now)
        self.consecutive_failures += 1
        if verdict != "failed":
            self.down = True
            return self.start_cooldown(settings, now) if verdict == "hung" else None
        if self.consecutive_failures >= settings.cooldown_after_failures:
            return self.start_cooldown(settings, now)
        return None

    def start_cooldown(self, settings: Settings, now: float) -> float:
        seconds = cooldown_length(settings, self.cooldowns_in_a_row)
        self.cooldowns_in_a_row += 1
        self.cooldown_until = max(self.cooldown_until, now + seconds)
        return seconds

    def probe_failed(self, reason: str | None = None) -> None:
        self.down = True
        if reason:
            self.last_error = reason

    def recovered(self, *, first_contact: bool) -> None:
        """A probe saw the engine answer after it was down."""
        self.down = False
        self.consecutive_failures = 0
        if not first_contact:
            self.weights_known = False

    def describe(self, now: float, *, verbose: bool = False) -> dict[str, Any]:
        """The engine in /readyz; its URL only when `verbose` (an admin asked)."""
        weights = self.weights.model_dump() if self.weights is not None else None
        return {
            "id": self.id,
            **({"url": self.url} if verbose else {}),
            "flavor": self.client.info.flavor,
            "version": self.client.info.version,
            "state": self.state(now),
            "in_flight": self.in_flight,
            "consecutive_failures": self.consecutive_failures,
            "cooldown_remaining": round(self.cooldown_remaining(now), 3),
            "loaded_weights": weights if self.weights_known else "unknown",
            "last_error": self.last_error,
        }
