"""Per-key limits across gateway replicas sharing Redis (real processes): requests in flight, requests per
minute and audio seconds per day count on every replica together, and a dead replica's slots come back;
Redis down → a limited key gets 503 redis_unavailable with Retry-After (never an open door), and Redis back →
requests pass again without a gateway restart."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.auth_support import bearer, write_keys
from tests.gateway_support import GatewayProcess, gateway_process
from tests.redis_support import RedisServer, running_redis
from tests.replica_support import replica_env, wait_for
from tests.support import (
    EngineProcess,
    assert_error,
    decode_wav,
    engine_stats,
    make_reference,
    running_engine,
    set_engine_faults,
)

TEXT = "Two replicas, one budget per key."


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RedisServer, EngineProcess, GatewayProcess, GatewayProcess, dict[str, str],
                                dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("replica-limits")
    raws = write_keys(tmp / "keys.txt", {
        "admin": ("admin", {}),
        "one": ("synthesize", {"concurrency": 1}),
        "rpm": ("synthesize", {"rpm": 4}),
        "guarded": ("synthesize", {"rpm": 1000}),
        "free": ("synthesize", {}),
        "quota": ("synthesize", {"audio_seconds_per_day": 1}),
    })
    with running_redis() as redis_server, running_engine("--debug-routes") as engine:
        # a 3 s lease: a dead replica's slot must still be held when the next request asks (under load)
        env = replica_env(redis_server.url, tmp / "shared", [engine.url],
                          GATEWAY_API_KEYS_FILE=str(tmp / "keys.txt"), GATEWAY_LEASE_SECONDS="3.0")
        with gateway_process(env) as a, gateway_process(env) as b:
            ref = make_reference(tmp / "ref.wav", seconds=4.0, f0=130.0).read_bytes()
            created = httpx.post(f"{a.url}/v1/voices", headers=bearer(raws["admin"]), timeout=60,
                                 data={"name": "anna", "prompt_text": "A sample.", "prompt_language": "en"},
                                 files={"audio": ("ref.wav", ref)})
            assert created.status_code == 201, created.text
            yield redis_server, engine, a, b, raws, env


def _speech(url: str, raw: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", headers=bearer(raw), timeout=60,
                      json={"model": "tts-1", "voice": "anna", "input": TEXT, "response_format": "wav"})


def _models(url: str, raw: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/models", headers=bearer(raw), timeout=10)


def test_requests_in_flight_count_on_every_replica(cluster: Any) -> None:
    _, engine, a, b, raws, _ = cluster
    set_engine_faults(engine.url, delay=4.5)  # longer than the lease: A must renew its slot meanwhile
    slow: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: slow.update(response=_speech(a.url, raws["one"])))
    try:
        thread.start()
        started = time.monotonic()
        wait_for(lambda: engine_stats(engine.url)["in_flight"], 10, "the slow request to reach the engine")
        refused = _models(b.url, raws["one"])  # same key, other replica, while A's request runs
        error = assert_error(refused, 429, "rate_limited", contains="1 requests in flight")
        assert error["limit"] == "concurrency" and int(refused.headers["retry-after"]) >= 1
        assert _models(b.url, raws["free"]).status_code == 200  # other keys are not held back
        time.sleep(max(0.0, started + 3.6 - time.monotonic()))  # past the first lease (3 s)
        if thread.is_alive():
            assert_error(_models(b.url, raws["one"]), 429, "rate_limited")
    finally:
        thread.join(60)
        set_engine_faults(engine.url, delay=0.0)
    assert slow["response"].status_code == 200, slow["response"].text
    samples, rate = decode_wav(slow["response"].content)
    assert len(samples) / rate > 0.5
    assert _models(b.url, raws["one"]).status_code == 200  # its slot came back when A's answer was sent


def test_a_killed_replicas_slots_come_back_after_a_lease(cluster: Any) -> None:
    _, engine, _, b, raws, env = cluster
    set_engine_faults(engine.url, delay=5.0)
    try:
        with gateway_process(env) as doomed:
            thread = threading.Thread(target=_swallow, args=(lambda: _speech(doomed.url, raws["one"]),))
            thread.start()
            wait_for(lambda: engine_stats(engine.url)["in_flight"], 10, "the request to reach the engine")
            doomed.proc.send_signal(signal.SIGKILL)
            doomed.proc.wait(10)
            thread.join(10)
            killed = time.monotonic()
            assert_error(_models(b.url, raws["one"]), 429, "rate_limited")  # its slot is still leased
        # nobody renews it any more: it lapses within the lease (3 s; the set's own expiry is 4 leases away)
        wait_for(lambda: _models(b.url, raws["one"]).status_code == 200, 6, "the dead replica's slot to lapse")
        assert time.monotonic() - killed < 6
    finally:
        set_engine_faults(engine.url, delay=0.0)


def _swallow(call: Any) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the replica is killed under it
        call()


def test_requests_per_minute_count_on_every_replica(cluster: Any) -> None:
    _, _, a, b, raws, _ = cluster
    remaining = [_models(url, raws["rpm"]).headers["x-ratelimit-remaining"] for url in (a.url, b.url, a.url, b.url)]
    assert remaining == ["3", "2", "1", "0"]  # one bucket for both replicas
    refused = _models(a.url, raws["rpm"])
    error = assert_error(refused, 429, "rate_limited", contains="4 requests per minute")
    assert error["limit"] == "requests_per_minute" and 1 <= int(refused.headers["retry-after"]) <= 15
    assert_error(_models(b.url, raws["rpm"]), 429, "rate_limited")


def test_audio_seconds_per_day_count_on_every_replica(cluster: Any) -> None:
    _, _, a, b, raws, _ = cluster
    first = _speech(a.url, raws["quota"])
    assert first.status_code == 200, first.text
    samples, rate = decode_wav(first.content)
    assert len(samples) / rate > 1.0  # the day's one second is used up on A ...
    refused = _speech(b.url, raws["quota"])  # ... so B refuses the next one
    error = assert_error(refused, 429, "rate_limited", contains="1 audio seconds")
    assert error["limit"] == "audio_seconds_per_day" and int(refused.headers["retry-after"]) >= 1


def test_redis_down_refuses_limited_keys_with_503_and_redis_back_lets_them_through(cluster: Any) -> None:
    redis_server, _, a, b, raws, _ = cluster
    assert _models(a.url, raws["guarded"]).status_code == 200
    redis_server.stop()
    try:
        for url in (a.url, b.url):
            down = _models(url, raws["guarded"])
            error = assert_error(down, 503, "redis_unavailable", contains="Redis")
            assert down.headers["retry-after"] == "2" and error["retry_after"] == 2
    finally:
        redis_server.start()
    for url in (a.url, b.url):  # no restart: the next request finds Redis again
        back = wait_for(lambda url=url: (r := _models(url, raws["guarded"])).status_code == 200 and r, 10,
                        "Redis to be used again")
        assert back.headers["x-ratelimit-limit"] == "1000"
