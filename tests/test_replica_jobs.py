"""Dubbing jobs across gateway replicas sharing Redis and the shared dir (real processes): a replica killed
mid-job is replaced by another, reads and events of a job work on any replica, a cancel sent to any replica
reaches the one running it, an Idempotency-Key holds across replicas, and a job outlives a Redis restart."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_support import GatewayProcess, gateway_process
from tests.job_support import create_voice, job, lines, submit, wait_for_done_segments, wait_for_job
from tests.redis_support import RedisServer, running_redis
from tests.replica_support import replica_env, sse_events, wait_for
from tests.support import EngineProcess, assert_error, decode_wav, running_engine, set_engine_faults


def syntheses(url: str) -> int:
    return int(set_engine_faults(url)["admitted"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RedisServer, EngineProcess, dict[str, str], GatewayProcess, GatewayProcess, str]]:
    tmp = tmp_path_factory.mktemp("replica-jobs")
    # a canned clip after 0.3 s a line: the replicas' coordination is under test, not synthesis
    engine_args = ("--debug-routes", "--instant", "--delay", "0.3")
    with running_redis() as redis_server, running_engine(*engine_args) as engine:
        env = replica_env(redis_server.url, tmp / "shared", [engine.url], GATEWAY_JOB_CONCURRENCY="1")
        with gateway_process(env) as a, gateway_process(env) as b:
            voice = create_voice(a.url, tmp)
            yield redis_server, engine, env, a, b, voice


def test_a_replica_killed_mid_job_is_replaced_by_another_without_redoing_work(cluster: Any) -> None:
    _, engine, env, _, b, voice = cluster
    set_engine_faults(engine.url, delay=0.3)
    with gateway_process(env) as doomed:
        before = syntheses(engine.url)
        job_id = submit(doomed.url, {"voice": voice, "segments": lines(6)}).json()["id"]
        partial = wait_for_done_segments(b.url, job_id, 2)  # read on a replica that does not run it
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(10)
        killed = time.monotonic()
    done_then = {s["id"]: s["audio"] for s in partial["segments"] if s["status"] == "done"}
    # the lease (1 s) lapses, a survivor claims the job on its next look (every third of it) and goes on
    wait_for(lambda: job(b.url, job_id)["progress"]["done"] > len(done_then), 8, "another replica to go on")
    resumed_after = time.monotonic() - killed
    done = wait_for_job(b.url, job_id, timeout=60)
    calls = syntheses(engine.url) - before
    assert done["status"] == "done", done
    assert all(segment["status"] == "done" for segment in done["segments"])
    for segment in done["segments"]:
        if segment["id"] in done_then:  # kept as it was: same audio, not run again
            assert segment["audio"] == done_then[segment["id"]] and segment["attempts"] == 1
        audio = httpx.get(segment["url"], timeout=30)
        samples, rate = decode_wav(audio.content)
        assert audio.status_code == 200 and abs(len(samples) / rate - segment["duration"]) < 0.01
    assert 6 <= calls <= 7, calls  # at most the line running at the kill ran twice
    assert resumed_after < 8, resumed_after


def test_a_replica_paused_past_its_lease_stops_working_on_the_job_another_took(cluster: Any) -> None:
    """SIGSTOP stands for a replica cut off from Redis (or frozen) longer than its lease."""
    _, engine, env, _, b, voice = cluster
    set_engine_faults(engine.url, delay=0.3)
    with gateway_process(env) as paused:
        before = syntheses(engine.url)
        job_id = submit(paused.url, {"voice": voice, "segments": lines(8)}).json()["id"]
        wait_for_done_segments(b.url, job_id, 2)
        paused.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: job(b.url, job_id)["progress"]["done"] >= 4, 15, "another replica to take over")
        finally:
            paused.proc.send_signal(signal.SIGCONT)
        done = wait_for_job(b.url, job_id, timeout=60)
        calls = syntheses(engine.url) - before
    assert done["status"] == "done" and all(s["status"] == "done" for s in done["segments"]), done
    # the one running at the pause may run twice, and may end after it; nothing else is done twice
    assert 8 <= calls <= 9, calls


def test_any_replica_shows_a_jobs_progress_and_cancels_it(cluster: Any) -> None:
    _, engine, _, a, b, voice = cluster
    set_engine_faults(engine.url, delay=0.3)
    job_id = submit(a.url, {"voice": voice, "segments": lines(12)}).json()["id"]
    seen: list[int] = []
    for event, data in sse_events(f"{b.url}/v1/jobs/{job_id}/events"):  # B polls the file A rewrites
        assert event == "progress" and data["id"] == job_id, (event, data)
        seen.append(data["progress"]["done"])
        if data["progress"]["done"] >= 2:
            break
    # each line as it is done, while the job still runs (not just its state at the start and the end)
    assert data["status"] == "running" and seen == sorted(seen) and 2 <= seen[-1] < 12, (data, seen)
    assert len(set(seen)) >= 2, seen
    cancelled = httpx.delete(f"{b.url}/v1/jobs/{job_id}", timeout=30)  # reaches A, which runs it
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["progress"]["cancelled"] >= 1, body["progress"]
    assert job(a.url, job_id)["status"] == "cancelled"
    calls = syntheses(engine.url)
    time.sleep(1.5)  # nothing of it runs any more, on A or anywhere (an engine call in flight may end)
    assert syntheses(engine.url) - calls <= 1
    final = job(a.url, job_id)
    assert final["status"] == "cancelled" and final["progress"]["done"] < 12, final["progress"]
    listed = httpx.get(f"{b.url}/v1/jobs", timeout=30).json()["jobs"]
    assert any(entry["id"] == job_id and entry["status"] == "cancelled" for entry in listed)


def test_an_idempotency_key_holds_across_replicas(cluster: Any) -> None:
    _, _, _, a, b, voice = cluster
    body = {"voice": voice, "segments": lines(1)}
    first = submit(a.url, body, **{"Idempotency-Key": "order-7"})
    assert first.status_code == 202, first.text
    again = submit(b.url, body, **{"Idempotency-Key": "order-7"})
    assert again.status_code == 202 and again.headers.get("idempotent-replayed") == "true", again.text
    assert again.json()["id"] == first.json()["id"]
    other = submit(b.url, {**body, "segments": lines(2)}, **{"Idempotency-Key": "order-7"})
    error = assert_error(other, 409, "idempotency_key_reused", contains="order-7")
    assert error["job_id"] == first.json()["id"]
    assert wait_for_job(b.url, first.json()["id"], timeout=60)["status"] == "done"


def test_a_job_survives_a_redis_restart_mid_job(cluster: Any) -> None:
    """The restart (without persistence) forgets every key: leases, idempotency keys (no other test needs one)."""
    redis_server, engine, _, a, b, voice = cluster
    set_engine_faults(engine.url, delay=0.3)
    job_id = submit(a.url, {"voice": voice, "segments": lines(8)}).json()["id"]
    wait_for_done_segments(b.url, job_id, 2)
    redis_server.restart(down_seconds=1.5)  # longer than the lease: the owner stops; its lease is gone after
    done = wait_for_job(b.url, job_id, timeout=60)  # a replica takes it over once Redis answers again
    assert done["status"] == "done" and all(s["status"] == "done" for s in done["segments"]), done
    assert all(segment["attempts"] <= 2 for segment in done["segments"])
    assert submit(b.url, {"voice": voice, "segments": lines(1)}).status_code == 202  # no restart needed
