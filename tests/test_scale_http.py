"""What a client and a load balancer see of Redis going away and coming back (a real redis-server, a real
gateway on a socket, a real CPU engine)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.gateway_support import clone, fast_settings, running_gateway
from tests.redis_support import running_redis
from tests.support import assert_error, make_reference, running_engine, wait_until


def test_redis_down_is_a_503_with_retry_after_and_readyz_says_why_until_it_returns(tmp_path: Path) -> None:
    audio = make_reference(tmp_path / "ref.wav").read_bytes()
    with running_engine("--instant") as engine, running_redis() as redis:
        settings = fast_settings(tmp_path / "shared", [engine.url], redis_url=redis.url, lease_seconds=1.0)
        with running_gateway(settings) as gateway:
            wait_until(lambda: httpx.get(f"{gateway.url}/readyz").status_code == 200)
            assert clone(gateway.url, audio).status_code == 200
            redis.stop()
            refused = clone(gateway.url, audio)
            error = assert_error(refused, 503, "redis_unavailable", contains="Redis does not answer")
            assert error["retry_after"] == 2 and refused.headers["retry-after"] == "2"
            ready = httpx.get(f"{gateway.url}/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"]
            assert ready.json()["redis"] == {"up": False, "replica": ready.json()["redis"]["replica"],
                                             "last_error": "Redis does not answer", "hold_seconds": 0.0}
            redis.start()  # empty, like a restart without persistence: no gateway restart needed
            wait_until(lambda: httpx.get(f"{gateway.url}/readyz").status_code == 200, timeout=20)
            answer = clone(gateway.url, audio)
            assert answer.status_code == 200, answer.text
            assert answer.json()["output_audio_base64"]
