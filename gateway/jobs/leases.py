"""The Redis side of jobs shared by replicas: who runs which job, idempotency keys, and the command lists.

Keys (under GATEWAY_REDIS_PREFIX):
- `job:<id>:owner` = replica id, PX lease. Taken with SET NX; renewed every third of the lease by one script
  for all the jobs a replica runs; deleted (only by its holder) when the job finishes or is cancelled.
- `job-idem:<sha256 of the Idempotency-Key>` = job id (SET NX), deleted with the job.
- `job-commands:<replica>`: a list of cancel/retry requests for the jobs that replica runs (BLPOP); it
  expires three leases after the last request, so a dead replica's list goes too.
- `jobs:sweeper`: one replica sweeps expired jobs per interval.

Every call goes through RedisLink.run: Redis down is RedisUnavailable (503) for the caller to handle.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.coord.link import RedisLink

# ARGV[1] replica, ARGV[2] lease ms; KEYS the owner keys of the jobs it runs. Returns the keys it lost.
_RENEW = """
local lost = {}
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, key)
  end
end
return lost
"""

# KEYS[1] a key; ARGV[1] its expected value: delete it only when it still holds that value.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class JobLeases:
    def __init__(self, link: RedisLink, lease_seconds: float) -> None:
        self._link = link
        self.replica = link.replica
        self._lease_ms = max(100, int(lease_seconds * 1000))
        self._renew = link.client.register_script(_RENEW)
        self._delete_if = link.client.register_script(_DELETE_IF)
        self._commands = link.key("job-commands", link.replica)

    def _owner_key(self, job_id: str) -> str:
        return self._link.key("job", job_id, "owner")

    def _idem_key(self, key: str) -> str:
        return self._link.key("job-idem", hashlib.sha256(key.encode()).hexdigest())

    async def _get(self, key: str) -> str | None:
        raw = await self._link.run(lambda: self._link.client.get(key))
        return None if raw is None else str(raw)

    # ------------------------------------------------------------------ leases

    async def claim(self, job_id: str) -> bool:
        """Take the job's lease when nobody holds it."""
        key = self._owner_key(job_id)
        return bool(await self._link.run(
            lambda: self._link.client.set(key, self.replica, nx=True, px=self._lease_ms)))

    async def give_up(self, job_id: str) -> None:
        """Let go of the lease (only if it is still ours)."""
        key = self._owner_key(job_id)
        await self._link.run(lambda: self._delete_if(keys=[key], args=[self.replica]))

    async def renew(self, job_ids: list[str]) -> list[str]:
        """Push the expiry of our leases; returns the jobs whose lease another replica holds now (or nobody)."""
        if not job_ids:
            return []
        ids = {self._owner_key(job_id): job_id for job_id in job_ids}
        lost = await self._link.run(lambda: self._renew(keys=list(ids), args=[self.replica, self._lease_ms]))
        return [ids[key] for key in lost]

    async def holder(self, job_id: str) -> str | None:
        return await self._get(self._owner_key(job_id))

    async def held(self, job_ids: list[str]) -> list[bool]:
        keys = [self._owner_key(job_id) for job_id in job_ids]
        holders = await self._link.run(lambda: self._link.client.mget(keys))
        return [holder is not None for holder in holders]

    async def sweep_turn(self, interval_seconds: float) -> bool:
        """True for one replica per interval (the one that sweeps)."""
        key, ms = self._link.key("jobs", "sweeper"), int(interval_seconds * 1000)
        return bool(await self._link.run(lambda: self._link.client.set(key, self.replica, nx=True, px=ms)))

    # ------------------------------------------------------------------ idempotency keys

    async def job_for_key(self, key: str) -> str | None:
        return await self._get(self._idem_key(key))

    async def bind_key(self, key: str, job_id: str, ttl: float, *, only_new: bool) -> bool:
        """Point the Idempotency-Key at the job (only_new: unless it points somewhere already)."""
        idem = self._idem_key(key)
        return bool(await self._link.run(
            lambda: self._link.client.set(idem, job_id, nx=only_new, ex=max(1, int(ttl)))))

    async def unbind_key(self, key: str, job_id: str) -> None:
        idem = self._idem_key(key)
        await self._link.run(lambda: self._delete_if(keys=[idem], args=[job_id]))

    # ------------------------------------------------------------------ commands to the replica running a job

    async def ask(self, replica: str, op: str, job_id: str) -> None:
        commands = self._link.key("job-commands", replica)

        async def push() -> None:
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.rpush(commands, json.dumps({"op": op, "job": job_id}))
                pipe.pexpire(commands, self._lease_ms * 3)
                await pipe.execute()

        await self._link.run(push)

    async def next_command(self) -> dict[str, Any] | None:
        """The next request for this replica, waiting up to a second (under the link's command timeout)."""
        item = await self._link.run(lambda: self._link.client.blpop([self._commands], timeout=1))
        return None if item is None else dict(json.loads(item[1]))
