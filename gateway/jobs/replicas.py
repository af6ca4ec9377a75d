"""Jobs shared by several replicas (GATEWAY_REDIS_URL): each unfinished job runs on the one replica holding its
lease; the job files in the shared dir are the state every replica reads.

Redis keys and calls: gateway/jobs/leases.py.

Every replica, every third of the lease, looks for unfinished job files whose lease nobody holds (their
replica died, or stopped on its way down) and claims and resumes them; done segments are kept.

Losing a lease (a renewal finds another holder, or Redis has not confirmed ours for most of a lease) stops the
job here at once, marking nothing. That is safe enough: we stop before the lease can lapse, so a new holder
starts only after we stopped; it re-reads the file after claiming, so every segment we finished is kept; and a
file write of ours still in a thread when we stop can only put back an older state, which the new holder's
next save replaces (every save writes the whole job). The worst case is a segment rendered twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import anyio

from gateway.coord.link import RedisLink, RedisUnavailable
from gateway.errors import Conflict, EngineUnavailable, GatewayError, NotFound
from gateway.jobs.leases import JobLeases
from gateway.jobs.model import FINISHED, Job
from gateway.jobs.runner import JobManager, SegmentWork, same_request
from gateway.jobs.store import JobStore
from gateway.services.context import Services

log = logging.getLogger("gateway.jobs")

#: A segment file younger than this is never swept (another replica may be about to reference it).
AUDIO_GRACE_SECONDS = 600.0


class OwnerBusy(EngineUnavailable):
    """A cancel or retry the replica running the job did not carry out in time (it may be dying: retry)."""

    code = "job_owner_unavailable"


class SharedJobManager(JobManager):
    """A JobManager whose memory holds only the jobs this replica runs; the rest is read from the files."""

    def __init__(self, services: Services, store: JobStore, work: SegmentWork, link: RedisLink) -> None:
        super().__init__(services, store, work)
        self._lease = services.settings.lease_seconds
        self._leases = JobLeases(link, self._lease)
        self._finished_seen: dict[str, int] = {}  # job id → mtime of its file when it was seen finished
        self._confirmed = time.monotonic()  # when Redis last confirmed every lease held here
        self._loops: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.store.prepare)
        self._loops = [asyncio.create_task(self._keep_loop(), name="job-leases"),
                       asyncio.create_task(self._command_loop(), name="job-commands"),
                       asyncio.create_task(self._sweep_loop(), name="job-sweeper")]

    async def close(self) -> None:
        """Stop; give back the leases, so another replica resumes our jobs now rather than after a lease."""
        running = list(self._jobs)
        await super().close()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        try:
            for job_id in running:
                await self._leases.give_up(job_id)
        except RedisUnavailable:
            pass  # they lapse after a lease

    # ------------------------------------------------------------------ reads: memory when ours, else the file

    async def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id) or await anyio.to_thread.run_sync(self.store.read, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r} (finished jobs expire after their TTL)", code="job_not_found")
        return job

    def changed(self, job_id: str) -> asyncio.Event:
        """Only the jobs running here are woken by a save; a stream of another replica's job polls its file
        (a fresh event each time: nothing is kept for jobs this replica never runs)."""
        return super().changed(job_id) if self.owns(job_id) else asyncio.Event()

    async def all(self) -> list[Job]:
        on_disk = {job.id: job for job in await anyio.to_thread.run_sync(self.store.load_all)}
        return list({**on_disk, **self._jobs}.values())

    async def by_idempotency_key(self, key: str, request_sha256: str) -> Job | None:
        job_id = await self._leases.job_for_key(key)
        if job_id is None:
            return None
        try:
            return same_request(key, await self.get(job_id), request_sha256)
        except NotFound:
            return None  # expired: the key is free again

    # ------------------------------------------------------------------ writes

    async def submit(self, job: Job) -> Job:
        await self._leases.claim(job.id)  # a fresh id: ours
        self._jobs[job.id] = job
        try:
            await self.save(job)
            standing = await self._settle_key(job)
        except BaseException:  # nothing may stay held and never run
            with suppress(RedisUnavailable):
                await self._drop(job)
            raise
        if standing is not job:
            await self._drop(job)
            return standing
        self._launch(job)
        return job

    async def _settle_key(self, job: Job) -> Job:
        """The job its Idempotency-Key stands for: `job`, or the twin another replica saved first."""
        if not job.idempotency_key:
            return job
        key, ttl = job.idempotency_key, self._services.settings.job_ttl + 86400  # outlives the job (≤ a day's run)
        if await self._leases.bind_key(key, job.id, ttl, only_new=True):
            return job
        earlier = await self.by_idempotency_key(key, job.request_sha256)  # 409: another body
        if earlier is not None:
            return earlier
        await self._leases.bind_key(key, job.id, ttl, only_new=False)  # its job expired
        return job

    async def cancel(self, job_id: str) -> Job:
        if self.owns(job_id):
            return await super().cancel(job_id)
        return await self._through_owner(job_id, "cancel", lambda job: job.status in FINISHED)

    async def retry(self, job_id: str) -> Job:
        if self.owns(job_id):
            return await super().retry(job_id)
        job = await self.get(job_id)
        if not any(segment.status == "failed" for segment in job.segments):
            raise Conflict(f"job {job_id} has no failed segments to retry", code="nothing_to_retry")
        return await self._through_owner(job_id, "retry", lambda job: all(s.status != "failed" for s in job.segments))

    async def delete(self, job_id: str) -> None:
        job = await self.get(job_id)
        if job.status not in FINISHED or self.owns(job_id) or not await self._leases.claim(job_id):
            raise Conflict(f"job {job_id} is still running; cancel it first", code="job_running")
        try:
            await self._forget([job])
        finally:
            with suppress(RedisUnavailable):  # else it lapses
                await self._leases.give_up(job_id)

    async def _through_owner(self, job_id: str, op: str, done: Callable[[Job], bool]) -> Job:
        """Cancel or retry a job this replica does not run: take it when its lease is free (then act here),
        else ask its holder and wait until the file shows the result."""
        deadline = time.monotonic() + 2 * self._lease + 5
        asked: str | None = None
        while True:
            job = await self.get(job_id)
            if done(job):
                return job
            if await self._leases.claim(job_id):
                return await self._act_here(job_id, op)
            owner = await self._leases.holder(job_id)
            if owner and owner != asked:
                await self._leases.ask(owner, op, job_id)
                asked = owner
            if time.monotonic() > deadline:
                raise OwnerBusy(f"the replica running job {job_id} did not {op} it in time", retry_after=self._lease)
            await asyncio.sleep(0.1)

    async def _act_here(self, job_id: str, op: str) -> Job:
        """With the lease just taken: cancel or retry here; let go unless the job now runs here."""
        job = await self._adopt(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r} (finished jobs expire after their TTL)", code="job_not_found")
        try:
            return await (super().cancel(job_id) if op == "cancel" else super().retry(job_id))
        finally:
            if self.owns(job_id) and job_id not in self._tasks:
                await self._released(job)

    async def _command_loop(self) -> None:
        while True:
            try:
                request = await self._leases.next_command()
            except RedisUnavailable:
                await asyncio.sleep(1.0)
                continue
            try:
                if request is not None:
                    await self._obey(request)
            except Exception:  # a surprise must not end the loop
                log.exception("job commands: unexpected error")

    async def _obey(self, request: dict[str, Any]) -> None:
        if not self.owns(request["job"]):
            return  # finished (or lost) meanwhile: the asker sees the file
        try:
            if request["op"] == "cancel":
                await super().cancel(request["job"])
            else:
                await super().retry(request["job"])
        except GatewayError as err:
            log.info("job %s: %s from another replica refused: %s", request["job"], request["op"], err.message)

    # ------------------------------------------------------------------ leases

    async def _released(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        self._locks.pop(job.id, None)
        with suppress(RedisUnavailable):  # else it lapses; whoever claims it then sees it finished and lets go
            await self._leases.give_up(job.id)

    def _abandon(self, job_id: str, why: str) -> None:
        """Stop running the job here at once, marking nothing (see the module docstring)."""
        log.warning("job %s: stopped here: %s", job_id, why)
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
        self._jobs.pop(job_id, None)
        self._locks.pop(job_id, None)

    async def _adopt(self, job_id: str) -> Job | None:
        """After claiming a lease: the job as its file says now, running segments queued again."""
        job = await anyio.to_thread.run_sync(self.store.read, job_id)
        if job is None:
            await self._leases.give_up(job_id)
            return None
        for segment in job.segments:
            if segment.status == "running":
                segment.status = "queued"
        self._jobs[job_id] = job
        return job

    async def _keep_loop(self) -> None:
        while True:
            try:
                await self._keep()
            except Exception:  # a surprise must not end the loop: every job's lease depends on it
                log.exception("job leases: unexpected error")
            await asyncio.sleep(self._lease / 3)

    async def _keep(self) -> None:
        """Renew our leases (stop what we lost), then take over the unfinished jobs nobody holds."""
        await self._renew_leases()
        with suppress(RedisUnavailable):
            await self._take_over()

    async def _renew_leases(self) -> None:
        asked = time.monotonic()
        owned = list(self._jobs)
        try:
            for job_id in await self._leases.renew(owned):
                self._abandon(job_id, "another replica holds its lease now")
            self._confirmed = asked
        except RedisUnavailable:
            if owned and time.monotonic() - self._confirmed > 0.8 * self._lease:
                for job_id in owned:
                    self._abandon(job_id, "Redis has not confirmed its lease for most of a lease")

    async def _still_ours(self, job: Job) -> bool:
        """Before each segment: when the last renewal is old (this process was paused, or cut off from Redis),
        renew now, so a replica that lost the lease does not start one more segment."""
        if time.monotonic() - self._confirmed > self._lease / 2:
            await self._renew_leases()
        return job.id in self._jobs

    async def _take_over(self) -> None:
        files = await anyio.to_thread.run_sync(self.store.scan)
        for gone in self._finished_seen.keys() - files.keys():
            del self._finished_seen[gone]
        candidates = [job_id for job_id, mtime in files.items()
                      if job_id not in self._jobs and self._finished_seen.get(job_id) != mtime]
        if not candidates:
            return
        for job_id, held in zip(candidates, await self._leases.held(candidates), strict=True):
            if held:
                continue
            job = await anyio.to_thread.run_sync(self.store.read, job_id)
            if job is None or job.status in FINISHED:
                if job is not None:
                    self._finished_seen[job_id] = files[job_id]
                continue
            if not await self._leases.claim(job_id):
                continue
            adopted = await self._adopt(job_id)  # read again: the file may have changed before we claimed
            if adopted is None:
                continue
            if adopted.status in FINISHED:
                await self._released(adopted)
                continue
            log.info("taking over job %s: %d segments left", job_id,
                     sum(s.status == "queued" for s in adopted.segments))
            self._launch(adopted)

    # ------------------------------------------------------------------ expiry

    async def sweep(self, now: float | None = None) -> int:
        """One replica per interval deletes the finished jobs older than the TTL (from the files)."""
        ttl = self._services.settings.job_ttl
        try:
            if not await self._leases.sweep_turn(min(max(ttl / 4, 0.5), 300.0)):  # the base loop's interval
                return 0
        except RedisUnavailable:
            return 0
        now = time.time() if now is None else now
        jobs = await anyio.to_thread.run_sync(self.store.load_all)
        expired = [j for j in jobs if j.status in FINISHED and j.finished_at is not None
                   and j.finished_at + ttl <= now and j.id not in self._jobs]
        if expired:
            await self._forget(expired)
        return len(expired)

    async def _forget(self, jobs: list[Job]) -> None:
        for job in jobs:
            await anyio.to_thread.run_sync(self.store.delete, job.id)
            self._finished_seen.pop(job.id, None)
            self._notify(job.id)
            if job.idempotency_key:
                with suppress(RedisUnavailable):
                    await self._leases.unbind_key(job.idempotency_key, job.id)
        gone = {s.audio for job in jobs for s in job.segments if s.audio}
        remaining = await anyio.to_thread.run_sync(self.store.load_all)
        kept = {s.audio for job in remaining for s in job.segments if s.audio} | self._writing
        removed = [d for d in gone - kept if self.store.audio_age(d) > AUDIO_GRACE_SECONDS]
        for digest in removed:
            self.store.remove_audio(digest)
        log.info("expired %d jobs, %d segment files", len(jobs), len(removed))

    async def _drop(self, job: Job) -> None:
        """Undo a submission that lost an idempotency race (nothing ran)."""
        self._jobs.pop(job.id, None)
        self._locks.pop(job.id, None)
        await anyio.to_thread.run_sync(self.store.delete, job.id)
        await self._leases.give_up(job.id)
