"""TEMPORARY stub of the render use case (the real one lands from the render branch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.engine.selection import Priority
from gateway.engine.types import EngineInfo, SynthesisRequest
from gateway.services.context import Services


@dataclass(frozen=True)
class DurationGoal:
    target: float
    tolerance: float = 0.05
    max_stretch: tuple[float, float] = (0.8, 1.25)


@dataclass
class Rendered:
    wav: bytes
    sample_rate: int
    frames: int
    engine: EngineInfo | None
    attempts: int
    queue_wait: float
    engine_seconds: float
    cached: bool
    timing: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


async def render(
    services: Services,
    request: SynthesisRequest,
    *,
    reference_id: str,
    goal: DurationGoal | None,
    timeout: float | None,
    priority: Priority = "interactive",
) -> Rendered:
    result = await services.pool.synthesize(request, timeout=timeout, priority=priority)
    return Rendered(
        result.wav, result.sample_rate, result.frames, result.engine, result.attempts, result.queue_wait,
        result.engine_seconds, False, None, result.warnings,
    )
