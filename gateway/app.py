"""`create_app(settings)`: wiring only — the pool, the voice store and the routes; no logic here."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from gateway import __version__
from gateway.api import health, jobs, references, speaker, speech, voice_clone, voices
from gateway.api.context import ClientDisconnected, RequestContext
from gateway.api.openapi import install_openapi
from gateway.auth import Auth, AuthMiddleware
from gateway.auth.redis_limits import RedisLimiter
from gateway.coord.link import RedisLink
from gateway.engine.pool import EnginePool
from gateway.errors import install_error_handlers
from gateway.jobs.replicas import SharedJobManager
from gateway.jobs.runner import JobManager
from gateway.jobs.store import JobStore
from gateway.jobs.work import render_segment
from gateway.metrics import Metrics
from gateway.services.context import Services
from gateway.services.reference_cache import ReferenceCache
from gateway.services.result_cache import ResultCache
from gateway.services.speaker import Speakers
from gateway.services.speaking_rate import SpeakingRates
from gateway.settings import Settings
from gateway.voices.store import VoiceStore
from gateway.web import mount_web

log = logging.getLogger("gateway")

#: Response headers a browser page may read across origins (CORS hides all but a few by default).
EXPOSED_HEADERS = [
    "X-Request-ID", "X-Audio-Duration", "X-Sample-Rate", "X-Engine", "X-Engine-Attempts", "X-Cache",
    "X-Reference-Id", "X-Voice-Id", "Retry-After", "Location", "Content-Disposition",
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
    "X-Quality-Ok", "X-Quality-Problems", "X-Quality-Attempts", "X-Quality-Similarity",
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    auth = Auth(settings)  # AuthConfigError: keys file broken, or open on a public address

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # several replicas share engine slots, the queue, engine state, jobs and key limits through Redis
        link = RedisLink(settings) if settings.redis_url else None
        settings.refs_dir.mkdir(parents=True, exist_ok=True)
        settings.voices_dir.mkdir(parents=True, exist_ok=True)
        voice_store = VoiceStore(settings.voices_dir, settings.refs_dir)
        # temp files of writers killed mid-write (here or in another replica) would otherwise stay for ever
        await anyio.to_thread.run_sync(voice_store.sweep_stale_temps)
        result_cache = ResultCache(settings.results_dir, settings.result_cache_bytes)
        await anyio.to_thread.run_sync(result_cache.load)
        pool = EnginePool(settings, metrics, link)
        await pool.start()
        app.state.services = Services(
            settings=settings,
            metrics=metrics,
            pool=pool,
            voices=voice_store,
            intake_limiter=anyio.CapacityLimiter(max(2, os.cpu_count() or 2)),
            reference_cache=ReferenceCache(settings.reference_cache_size),
            result_cache=result_cache,
            speaking_rate=SpeakingRates(),
            speakers=Speakers(settings),
            link=link,
        )
        services = app.state.services
        await anyio.to_thread.run_sync(services.speakers.voice_embeddings.sweep_stale_temps)
        limiter = RedisLimiter(link, settings.lease_seconds) if link is not None else None
        if limiter is not None:
            auth.limiter = limiter  # every replica counts each key's requests, slots and audio together
            limiter.start()
        auth.start()
        store = JobStore(settings.jobs_dir)
        services.jobs = (JobManager(services, store, render_segment) if link is None
                         else SharedJobManager(services, store, render_segment, link))
        await services.jobs.start()
        engines = ",".join(f"e{index}={url}" for index, url in enumerate(settings.engines))  # ids clients see → URLs
        log.info("gateway ready: engines=%s shared_dir=%s", engines, settings.shared_dir)
        try:
            yield
        finally:
            auth.stop()
            await services.jobs.close()
            await pool.close()
            if limiter is not None:
                await limiter.close()
            if link is not None:
                await link.close()

    # /docs and /redoc with Swagger UI and ReDoc served from the fastapi-offline package, not a CDN: GPU hosts
    # in studios often have no internet, and the stock pages are blank there
    app = FastAPIOffline(
        title="sovits-gateway",
        version=__version__,
        description="Production gateway in front of GPT-SoVITS voice-cloning engines.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    for module in (voice_clone, speech, voices, references, speaker, jobs, health):
        app.include_router(module.router)
    mount_web(app)
    app.state.auth = auth
    app.add_middleware(AuthMiddleware, auth=auth)  # inside RequestContext: refusals get request ids
    if settings.cors_origins:  # off by default: browsers on other origins may not call the API
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],  # Authorization, X-API-Key, X-Request-Timeout, Idempotency-Key, ...
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    install_openapi(app)  # error responses, required fields, /metrics as text (gateway/api/openapi.py)
    app.add_middleware(RequestContext, metrics=metrics)
    return app
