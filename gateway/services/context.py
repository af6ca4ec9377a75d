"""The per-app service container handed to routes (created in the app lifespan, never a module global)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from gateway.engine.pool import EnginePool
from gateway.metrics import Metrics
from gateway.services.reference_cache import ReferenceCache
from gateway.services.result_cache import ResultCache
from gateway.services.speaker import Speakers
from gateway.services.speaking_rate import SpeakingRates
from gateway.settings import Settings
from gateway.voices.store import VoiceStore

if TYPE_CHECKING:
    from gateway.coord.link import RedisLink
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
    #: the speaker encoder (loaded on first use; none without the `quality` extra) and voices' embeddings
    speakers: Speakers
    #: dubbing jobs (set once the container exists: the manager renders through it)
    jobs: JobManager | None = None
    #: the replicas' shared Redis (GATEWAY_REDIS_URL); None: one process, everything in memory
    link: RedisLink | None = None
