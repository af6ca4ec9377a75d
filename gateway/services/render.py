"""The render use case every whole-clip synthesis goes through (single requests and job segments):
result cache, then the pool, then duration targeting.

Duration targeting: the speaking-rate predictor guesses how long the voice takes at speed 1, the engine's
speed knob aims at the target, and a result still outside the tolerance is time-stretched (pitch kept,
audio/stretch.py) toward the target within `max_stretch`. Speech is never cut: when the target cannot be
reached within those bounds the clip keeps all its speech and `within_tolerance` says false. The engine's
leading and trailing silence is trimmed first (to 5 ms): the target is for the speech, and a dubbed line must
start on its cue, not on the engine's pause before it.

Result cache: with a fixed seed the render is a pure function of its inputs (result_cache.py). With a goal
the key holds the goal instead of the speed, because the speed chosen depends on what the predictor has
seen so far, and a rerun must still hit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import numpy as np

from gateway.audio.stretch import time_stretch, trim_edge_silence
from gateway.audio.wav import pcm16_wav, wav_samples
from gateway.engine.selection import Priority
from gateway.engine.types import EngineInfo, SynthesisRequest
from gateway.services.context import Services
from gateway.services.quality import Checked, QualityOptions, synthesize_checked
from gateway.services.result_cache import CachedResult, result_key

log = logging.getLogger("gateway.render")

#: the engine speed knob's range when aiming at a duration (GPT-SoVITS speaks intelligibly within it)
MIN_SPEED, MAX_SPEED = 0.5, 2.0



@dataclass(frozen=True)
class DurationGoal:
    """How long a clip should last: `target` seconds ± `tolerance` × target, stretching by at most the
    new/old duration factors in `max_stretch`."""

    target: float
    tolerance: float = 0.05
    max_stretch: tuple[float, float] = (0.8, 1.25)

    def fits(self, seconds: float) -> bool:
        return self.target * (1 - self.tolerance) <= seconds <= self.target * (1 + self.tolerance)


@dataclass
class Rendered:
    """A finished clip (after any stretch) as a PCM16 mono WAV, and how it was made."""

    wav: bytes
    sample_rate: int
    frames: int
    engine: EngineInfo | None  # None on a cache hit
    attempts: int
    queue_wait: float
    engine_seconds: float
    cached: bool
    timing: dict[str, Any] | None  # the duration goal's report, None without a goal
    warnings: list[str] = field(default_factory=list)
    cache_key: str | None = None  # None: the cache was not consulted (no fixed seed, or disabled)
    #: the quality checks of the engine's clip (services/quality.py `Checked.as_dict`); None from an old cache entry
    quality: dict[str, Any] | None = None

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def cache_status(self) -> Literal["hit", "miss", "bypass"]:
        """What `X-Cache` says."""
        return "hit" if self.cached else "miss" if self.cache_key else "bypass"


def choose_speed(predicted: float | None, goal: DurationGoal) -> float:
    """The engine speed that should make a clip predicted to last `predicted` s at speed 1 last the target."""
    if predicted is None or predicted <= 0:
        return 1.0
    return round(min(MAX_SPEED, max(MIN_SPEED, predicted / goal.target)), 3)


def stretch_factor(seconds: float, goal: DurationGoal) -> float:
    """New/old duration factor toward the target, within the goal's bounds; 1.0 when already within tolerance."""
    if seconds <= 0 or goal.fits(seconds):
        return 1.0
    low, high = goal.max_stretch
    return min(high, max(low, goal.target / seconds))


def fit_duration(wav: bytes, goal: DurationGoal, speed: float) -> tuple[bytes, int, dict[str, Any]]:
    """Fit an engine WAV to the goal (CPU work: run in a thread) → (wav, frames, report).

    The edges' silence goes, then the speech is stretched toward the target within `max_stretch`. Speech still
    too short after that is followed by silence up to the target (the line fills its slot: what a timeline
    gets anyway); speech too long stays whole (`within_tolerance` false)."""
    samples, rate = wav_samples(wav)
    speech = trim_edge_silence(samples, rate)  # the target is for the speech: an onset on the cue, not a gap
    raw = len(speech) / rate
    factor = stretch_factor(raw, goal)
    if factor != 1.0:
        speech = time_stretch(speech, rate, factor)
    spoken = len(speech) / rate
    padded = spoken < goal.target * (1 - goal.tolerance)
    if padded:
        speech = np.concatenate([speech, np.zeros(round(goal.target * rate) - len(speech), dtype=np.float32)])
    if len(speech) != len(samples):
        wav = pcm16_wav(speech, rate)
    achieved = len(speech) / rate
    used = [name for name, on in (("speed", speed != 1.0), ("stretch", factor != 1.0), ("pad", padded)) if on]
    report = {
        "target": round(goal.target, 4),
        "raw": round(raw, 4),  # the engine's speech, edge silence trimmed, before any stretch
        "speech": round(spoken, 4),  # the speech after the stretch (without the padding)
        "achieved": round(achieved, 4),
        "method": "+".join(used) or "none",
        "speed": speed,
        "stretch": round(factor, 4),
        "within_tolerance": goal.fits(achieved),
    }
    return wav, len(speech), report


def cache_inputs(
    request: SynthesisRequest, reference_id: str, goal: DurationGoal | None, engines: list[str]
) -> dict[str, Any]:
    """Everything a seeded render depends on. The engine path of the reference is replaced by its content
    hash; every other request field counts (a knob added later is keyed automatically)."""
    inputs: dict[str, Any] = {"reference_sha256": reference_id, "engines": engines}
    for f in dataclasses.fields(request):
        if f.name in ("reference_path", "weights") or (f.name == "speed" and goal is not None):
            continue
        value = getattr(request, f.name)
        inputs[f.name] = list(value) if isinstance(value, tuple) else value
    inputs["weights"] = request.weights.model_dump() if request.weights is not None else None
    if goal is not None:
        inputs["goal"] = {"target": goal.target, "tolerance": goal.tolerance, "max_stretch": list(goal.max_stretch)}
    return inputs


def engine_versions(services: Services) -> list[str]:
    """What the engines would make results with: sorted distinct `flavor:version`, reachable or not."""
    described = services.pool.status()["engines"]
    return sorted({f"{e['flavor']}:{e['version']}" for e in described if e["flavor"] != "unknown"})


async def render(
    services: Services,
    request: SynthesisRequest,
    *,
    reference_id: str,
    goal: DurationGoal | None,
    timeout: float | None,
    priority: Priority = "interactive",
    quality: QualityOptions = QualityOptions(),  # noqa: B008 - frozen
) -> Rendered:
    """One whole clip: from the cache when seeded and stored before, else from the pool (quality-checked,
    regenerated on failure as `quality` allows), then fitted to the goal. With a goal the request's own
    `speed` is replaced by the one the goal needs. Callers count the audio they hand out
    (gateway_audio_seconds): a job counts its segments when they are done.

    Only a render made with the request's own seed is stored (a regeneration's random seed is not part of
    the key), and a stored clip that failed its checks is not served to a request that allows retries."""
    cache, metrics = services.result_cache, services.metrics
    key = None
    if request.seed is not None and request.seed != -1 and cache.enabled:
        key = result_key(cache_inputs(request, reference_id, goal, engine_versions(services)))
        hit = await anyio.to_thread.run_sync(cache.get, key)
        metrics.result_cache.labels(outcome="hit" if hit else "miss").inc()
        if hit is not None and (quality.retries == 0 or (hit.meta.get("quality") or {}).get("ok", True)):
            return _from_cache(hit, key)
    speed = request.speed if request.speed is not None else 1.0
    if goal is not None:
        predicted = services.speaking_rate.predict(reference_id, request.text_language, request.text)
        speed = choose_speed(predicted, goal)
        request = dataclasses.replace(request, speed=speed)
    checked = await synthesize_checked(services, request, quality, timeout=timeout, priority=priority)
    rendered = await _finish(checked, goal, speed, key)
    _observe(services, reference_id, request, rendered, checked, speed)
    if goal is not None and (better := corrected_speed(rendered, goal, speed)) is not None:
        # the prediction was too far off for the stretch bounds: once more at the speed this render measured
        first, speed = rendered, better
        request = dataclasses.replace(request, speed=speed)
        checked = await synthesize_checked(services, request, quality, timeout=timeout, priority=priority)
        rendered = await _finish(checked, goal, speed, key)
        _observe(services, reference_id, request, rendered, checked, speed)
        rendered.engine_seconds += first.engine_seconds
        rendered.attempts += first.attempts
        if rendered.timing is not None:
            rendered.timing["renders"] = 2
    if rendered.timing is not None:
        timing = rendered.timing
        metrics.duration_targets.labels(method=timing["method"], within=str(timing["within_tolerance"]).lower()).inc()
    if key is not None and checked.report.seed == (request.seed if request.seed != -1 else None):
        meta = _metadata(rendered)
        if await anyio.to_thread.run_sync(cache.put, key, rendered.wav, meta):
            metrics.result_cache.labels(outcome="store").inc()
    return rendered


def corrected_speed(rendered: Rendered, goal: DurationGoal, speed: float) -> float | None:
    """A second engine speed when a render's speech is outside what stretching within `max_stretch` can bring
    to the target; None when the stretch reaches it, or the speed would not change (at its limit)."""
    timing = rendered.timing
    if timing is None or not timing["raw"] > 0:
        return None
    low, high = goal.max_stretch
    if low <= goal.target / timing["raw"] <= high:
        return None
    better = round(min(MAX_SPEED, max(MIN_SPEED, speed * timing["raw"] / goal.target)), 3)
    return better if abs(better - speed) > 0.02 * speed else None


def _observe(
    services: Services, reference_id: str, request: SynthesisRequest, rendered: Rendered, checked: Checked,
    speed: float,
) -> None:
    """Teach the predictor the speech's own length when it was measured (edges trimmed), else the clip's;
    a clip that failed its checks teaches nothing (an endless one would skew every later guess)."""
    if not checked.report.ok:
        return
    spoken = rendered.timing["raw"] if rendered.timing is not None else checked.result.duration
    services.speaking_rate.observe(reference_id, request.text_language, request.text, spoken, speed)


async def _finish(checked: Checked, goal: DurationGoal | None, speed: float, key: str | None) -> Rendered:
    result = checked.result
    wav, frames, timing = result.wav, result.frames, None
    if goal is not None:
        started = time.perf_counter()
        wav, frames, timing = await anyio.to_thread.run_sync(fit_duration, wav, goal, speed)
        log.debug("fitted %.2fs to %.2fs target in %.1f ms", result.duration, goal.target,
                  (time.perf_counter() - started) * 1000)
    warnings = list(result.warnings)
    if timing is not None and not timing["within_tolerance"]:
        low, high = goal.max_stretch if goal is not None else (0.0, 0.0)
        warnings.append(
            f"the clip lasts {timing['achieved']:.2f} s, outside the {timing['target']:.2f} s target's tolerance: "
            f"the engine made {result.duration:.2f} s at speed {speed:g} and stretching is limited to "
            f"{low:g}–{high:g}× (speech is never cut)"
        )
    return Rendered(
        wav=wav, sample_rate=result.sample_rate, frames=frames, engine=result.engine, attempts=result.attempts,
        queue_wait=result.queue_wait, engine_seconds=result.engine_seconds, cached=False, timing=timing,
        warnings=warnings, cache_key=key, quality=checked.as_dict(),
    )


def _metadata(rendered: Rendered) -> dict[str, Any]:
    engine = rendered.engine
    return {
        "timing": rendered.timing,
        "warnings": rendered.warnings,
        "engine": dataclasses.asdict(engine) if engine is not None else None,
        "engine_seconds": rendered.engine_seconds,
        "quality": rendered.quality,
        "created": time.time(),
    }


def _from_cache(hit: CachedResult, key: str) -> Rendered:
    return Rendered(
        wav=hit.wav, sample_rate=hit.sample_rate, frames=hit.frames, engine=None, attempts=0, queue_wait=0.0,
        engine_seconds=0.0, cached=True, timing=hit.meta.get("timing"), warnings=list(hit.meta.get("warnings", [])),
        cache_key=key, quality=hit.meta.get("quality"),
    )
