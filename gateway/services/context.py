"""The per-app service container handed to routes (created in the app lifespan, never a module global)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from gateway.engine.pool import EnginePool
from gateway.metrics import Metrics
from gateway.services.reference_cache import ReferenceCache
from gateway.services.result_cache import ResultCache
from gateway.services.speaking_rate import SpeakingRates
from gateway.settings import Settings
from gateway.speaker import SpeakerEncoder
from gateway.voices.store import VoiceStore

if TYPE_CHECKING:
    from gateway.jobs.runner import JobManager


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    pool: EnginePool
    voices: VoiceStore
    #: bounds concurrent reference decodes (CPU and memory heavy) whatever the request concurrency
    intake_limiter: anyio.CapacityLimiter
    #: prepared references by upload hash and intake options (metadata only; the audio is in the shared dir)
    reference_cache: ReferenceCache
    #: seeded renders by content key, on the shared dir (services/render.py)
    result_cache: ResultCache
    #: per voice and language speaking rates learned from renders (duration targeting's first guess)
    speaking_rate: SpeakingRates
    #: the speaker encoder of the `quality` extra (min_similarity); None when it is not installed
    speaker_encoder: SpeakerEncoder | None = None
    #: dubbing jobs (set once the container exists: the manager renders through it)
    jobs: JobManager | None = None
