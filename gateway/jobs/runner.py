"""Runs dubbing jobs through the engine pool: at most `job_concurrency` segments of a job in flight, each
as batch work (interactive requests go first), every state change saved, so a restart resumes the rest.

- Workers pull the next queued segment, so a retry or a resume just re-queues segments.
- A segment that fails with a retryable error (engine 502/503, queue timeout) is tried again after the
  error's Retry-After, up to SEGMENT_ROUNDS rounds; each round is already a full failover in the pool.
- Cancel: queued and running segments become `cancelled`; a running engine call is left to the pool,
  which keeps its slot until the engine really answers (nothing else lands on a busy engine).
- Finished jobs are deleted `job_ttl` seconds after they finish, with segment audio no other job uses.

With GATEWAY_REDIS_URL, SharedJobManager (replicas.py) extends this: a replica runs only the jobs whose lease
it holds, and reads the others from their files.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import anyio

from gateway.auth.access import charge_audio
from gateway.errors import Conflict, EngineError, GatewayError, NotFound
from gateway.jobs.model import FINISHED, Job, Segment
from gateway.jobs.store import JobStore
from gateway.services.context import Services

log = logging.getLogger("gateway.jobs")

#: Rounds of the pool's failover per segment before it is marked failed (retryable errors only).
SEGMENT_ROUNDS = 3

#: Renders one segment: fills in its metadata and returns its WAV (the manager stores it).
SegmentWork = Callable[[Services, Job, Segment], Awaitable[bytes]]


def error_body(err: GatewayError) -> dict[str, Any]:
    """The error envelope's fields, as a job reports them per segment."""
    body: dict[str, Any] = {"status": err.status, "code": err.code, "message": err.message, **err.extra}
    if err.retry_after is not None:
        body["retry_after"] = err.retry_after
    return body


def same_request(key: str, job: Job, request_sha256: str) -> Job:
    """`job` when it was made from this body; 409 when its Idempotency-Key came with another body."""
    if job.request_sha256 != request_sha256:
        raise Conflict(
            f"Idempotency-Key {key!r} was used for a different job request ({job.id})",
            code="idempotency_key_reused",
            job_id=job.id,
        )
    return job


class JobManager:
    """The jobs of this gateway, in memory and on disk; one asyncio task per unfinished job."""

    def __init__(self, services: Services, store: JobStore, work: SegmentWork) -> None:
        self._services = services
        self.store = store
        self._work = work
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._by_key: dict[str, str] = {}
        self._writing: set[str] = set()  # segment audio being stored, not yet referenced by its job
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load every job; resume the unfinished ones (segments that were running run again)."""
        await anyio.to_thread.run_sync(self.store.prepare)
        for job in await anyio.to_thread.run_sync(self.store.load_all):
            self._remember(job)
            if job.status not in FINISHED:
                for segment in job.segments:
                    if segment.status == "running":
                        segment.status = "queued"
                log.info("resuming job %s: %d segments left", job.id, sum(s.status == "queued" for s in job.segments))
                self._launch(job)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="job-sweeper")

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ the API's operations

    async def by_idempotency_key(self, key: str, request_sha256: str) -> Job | None:
        """The job made earlier with this key and body; 409 when the key came with another body."""
        job_id = self._by_key.get(key)
        job = self._jobs.get(job_id) if job_id else None
        return same_request(key, job, request_sha256) if job is not None else None

    async def submit(self, job: Job) -> Job:
        """Save and start `job`; returns the job that runs (a replica's idempotent twin may win)."""
        self._remember(job)
        await self.save(job)
        self._launch(job)
        return job

    async def all(self) -> list[Job]:
        return list(self._jobs.values())

    def owns(self, job_id: str) -> bool:
        """True when this process runs the job (its memory copy is the newest state, and saves wake waiters)."""
        return job_id in self._jobs

    async def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r} (finished jobs expire after their TTL)", code="job_not_found")
        return job

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.status in FINISHED:
            return job
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        for segment in job.segments:
            if segment.status in ("queued", "running"):
                segment.status = "cancelled"
        self._finish(job, "cancelled")
        await self.save(job)
        await self._released(job)
        return job

    async def delete(self, job_id: str) -> None:
        """Forget a finished job and its files now (the TTL would do it later)."""
        job = await self.get(job_id)
        if job.status not in FINISHED:
            raise Conflict(f"job {job_id} is still {job.status}; cancel it first", code="job_running")
        await self._forget([job])

    async def retry(self, job_id: str) -> Job:
        """Re-queue the failed segments only (done ones are kept, cancelled ones stay cancelled)."""
        job = await self.get(job_id)
        failed = [segment for segment in job.segments if segment.status == "failed"]
        if not failed:
            raise Conflict(f"job {job_id} has no failed segments to retry", code="nothing_to_retry")
        for segment in failed:
            segment.status, segment.error = "queued", None
        job.status, job.finished_at = "running", None
        await self.save(job)
        if job_id not in self._tasks:
            self._launch(job)
        return job

    def changed(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next change (each change replaces it: wait on a fresh one)."""
        return self._changed.setdefault(job_id, asyncio.Event())

    async def save(self, job: Job) -> None:
        """Persist the job's current state (one writer per job at a time, so an older state never lands
        after a newer one) and wake its event streams."""
        job.updated_at = time.time()
        self._notify(job.id)
        async with self._locks.setdefault(job.id, asyncio.Lock()):
            data = job.model_dump_json().encode()
            await anyio.to_thread.run_sync(self.store.write, job.id, data)

    # ------------------------------------------------------------------ running

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.idempotency_key:
            self._by_key[job.idempotency_key] = job.id

    def _launch(self, job: Job) -> None:
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda done: self._tasks.pop(job.id, None) if self._tasks.get(job.id) is done else None)

    async def _run(self, job: Job) -> None:
        job.status = "running"
        await self.save(job)
        concurrency = self._services.settings.job_concurrency
        # a retry may re-queue segments while the last workers finish: run until none is queued
        while any(segment.status == "queued" for segment in job.segments):
            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(self._worker(job))
        self._finish(job, "failed" if any(s.status == "failed" for s in job.segments) else "done")
        await self.save(job)
        log.info("job %s %s: %s", job.id, job.status, job.progress())
        await self._released(job)

    async def _released(self, job: Job) -> None:
        """The job stopped running here (finished or cancelled); replicas give up its lease."""

    async def _worker(self, job: Job) -> None:
        while await self._still_ours(job):
            segment = next((s for s in job.segments if s.status == "queued"), None)
            if segment is None:
                return
            segment.status = "running"  # claimed before any await: no other worker takes it
            await self._run_segment(job, segment)

    async def _still_ours(self, job: Job) -> bool:
        """Whether this process may start another segment of the job (replicas: it still holds the lease)."""
        return True

    async def _run_segment(self, job: Job, segment: Segment) -> None:
        await self.save(job)
        for round_number in range(1, SEGMENT_ROUNDS + 1):
            try:
                wav = await self._work(self._services, job, segment)
                await self._store_audio(segment, wav)
                segment.status, segment.error = "done", None
                break
            except GatewayError as err:
                segment.error = error_body(err)
                retryable = isinstance(err, EngineError) and err.retryable
                if not retryable or round_number == SEGMENT_ROUNDS:
                    segment.status = "failed"
                    log.warning("job %s segment %s failed: %s", job.id, segment.id, err.message)
                    break
                await asyncio.sleep(min(err.retry_after or 1.0, 10.0))
        segment.finished_at = time.time()
        metrics = self._services.metrics
        metrics.job_segments.labels(outcome=segment.status).inc()
        if segment.status == "done":
            metrics.audio_seconds.inc(segment.duration or 0.0)
            await charge_audio(segment.duration or 0.0)  # the submitting request's key: its task started this one
        await self.save(job)

    async def _store_audio(self, segment: Segment, wav: bytes) -> None:
        digest = hashlib.sha256(wav).hexdigest()
        self._writing.add(digest)  # a sweep running meanwhile must not take it
        try:
            await anyio.to_thread.run_sync(self.store.put_audio, digest, wav)
            segment.audio = digest
        finally:
            self._writing.discard(digest)

    def _finish(self, job: Job, status: str) -> None:
        job.status = status  # type: ignore[assignment]  # one of FINISHED
        job.finished_at = time.time()

    def _notify(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    # ------------------------------------------------------------------ expiry

    async def _sweep_loop(self) -> None:
        ttl = self._services.settings.job_ttl
        interval = min(max(ttl / 4, 0.5), 300.0)
        while True:
            await self.sweep()
            await asyncio.sleep(interval)

    async def sweep(self, now: float | None = None) -> int:
        """Delete the finished jobs older than the TTL; returns how many went."""
        now = time.time() if now is None else now
        ttl = self._services.settings.job_ttl
        expired = [j for j in self._jobs.values() if j.finished_at is not None and j.finished_at + ttl <= now]
        if expired:
            await self._forget(expired)
        return len(expired)

    async def _forget(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._jobs.pop(job.id, None)
            self._locks.pop(job.id, None)
            if job.idempotency_key and self._by_key.get(job.idempotency_key) == job.id:
                del self._by_key[job.idempotency_key]
            self._notify(job.id)
            await anyio.to_thread.run_sync(self.store.delete, job.id)
        # Decided and done without an await: no segment can start storing the same audio in between
        # (a store already running is in _writing). A few unlinks, rarely: fine on the loop.
        gone = {s.audio for job in jobs for s in job.segments if s.audio}
        kept = {s.audio for job in self._jobs.values() for s in job.segments if s.audio} | self._writing
        for digest in gone - kept:
            self.store.remove_audio(digest)
        log.info("expired %d jobs, %d segment files", len(jobs), len(gone - kept))
