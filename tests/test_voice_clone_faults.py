"""Engine faults seen through `POST /v1/voice-clone`: each maps to a clear 5xx, never a fake success."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import pytest

from tests.gateway_support import clone, fast_settings, gateway_process, running_gateway
from tests.support import assert_error, engine_stats, running_engine, set_engine_faults, wait_until


def test_engine_stopped_is_503_with_retry_after(tmp_path: Path, reference: bytes) -> None:
    with running_engine(flavor="v2") as engine:
        url = engine.url
        with running_gateway(fast_settings(tmp_path, [url])) as gw:
            engine.stop()
            response = clone(gw.url, reference)
            error = assert_error(response, 503, "engine_unavailable")
            assert error["service_available"] is False
            # no engine time measured yet: the 2 s first estimate × queue position 1 / no free engine
            assert (response.headers["retry-after"], error["retry_after"]) == ("2", 2)
            assert error["engine"] == "e0" and error["message"].startswith("engine e0 refused the connection")
            assert url.removeprefix("http://") not in response.text  # the id, never the URL
            ready = httpx.get(f"{gw.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["engines"][0]["state"] in {"down", "cooling_down"}


def test_engine_killed_mid_request_is_503(tmp_path: Path, reference: bytes) -> None:
    with running_engine("--exit-after", "0", flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        response = clone(gw.url, reference)
        assert_error(response, 503, "engine_unavailable")  # the request never ran: retryable, Retry-After
        assert response.headers["retry-after"] == "2"  # the 2 s first estimate of engine time
        assert engine.proc.wait(10) == 70  # the CPU engine's crash status: it died on the request


def test_hanging_engine_times_out_with_504(tmp_path: Path, reference: bytes) -> None:
    with running_engine("--fault", "hang", flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        response = clone(gw.url, reference, headers={"X-Request-Timeout": "2"}, timeout=30)
        assert_error(response, 504, "engine_timeout")


@pytest.mark.parametrize(
    ("fault", "code", "contains"),
    [("silence", "engine_silence", "silence"), ("truncate", "engine_bad_response", "short"),
     ("500", "engine_bad_response", "500")],
)
def test_engine_garbage_is_502(tmp_path: Path, reference: bytes, fault: str, code: str, contains: str) -> None:
    with running_engine("--fault", fault, flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        response = clone(gw.url, reference)
        error = assert_error(response, 502, code, contains=contains)
        assert error["attempts"] == 1  # the only engine failed: no instant retry on it, the honest 502
        assert response.headers["retry-after"] == "2"  # the 2 s first estimate of engine time
        assert error["engine"] == "e0" and error["message"].startswith("engine e0 ")
        assert engine.url.removeprefix("http://") not in response.text


def test_engine_validation_failure_is_422_with_the_engine_message(tmp_path: Path, reference: bytes) -> None:
    # a v1 model has no Korean; the engine's own message comes back as a 422
    with running_engine("--model-version", "v1", flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        response = clone(gw.url, reference, text="안녕하세요", text_language="ko")
        assert response.status_code == 422, response.text
        assert "ko" in response.json()["error"]["message"]


def test_oversize_upload_is_413_without_buffering(tmp_path: Path, reference: bytes) -> None:
    limit = 2_000_000
    env = {"GATEWAY_ENGINES": "http://127.0.0.1:9", "GATEWAY_SHARED_DIR": str(tmp_path),
           "GATEWAY_MAX_UPLOAD_BYTES": str(limit)}
    with gateway_process(env) as gw:
        before = gw.peak_rss_kib()
        big = b"RIFF" + b"\0" * 60_000_000

        def body() -> object:
            yield b"--B\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhello\r\n"
            yield b"--B\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n\r\n"
            for start in range(0, len(big), 1 << 20):
                yield big[start : start + (1 << 20)]
            yield b"\r\n--B--\r\n"

        # chunked (no Content-Length): the gateway must stop at the cap while streaming
        response = httpx.post(
            f"{gw.url}/v1/voice-clone",
            content=body(),  # type: ignore[arg-type]
            headers={"Content-Type": "multipart/form-data; boundary=B"},
            timeout=60,
        )
        assert_error(response, 413, "payload_too_large", contains=str(limit))
        # declared too large: refused up front
        response = httpx.post(
            f"{gw.url}/v1/voice-clone", files={"audio": ("a.wav", big)}, data={"text": "hi"}, timeout=60
        )
        assert_error(response, 413, "payload_too_large")
        growth_mib = (gw.peak_rss_kib() - before) / 1024
        assert growth_mib < 20, f"gateway peak RSS grew by {growth_mib:.1f} MiB for a 60 MB upload"


def test_client_that_leaves_the_queue_frees_its_place(tmp_path: Path, reference: bytes) -> None:
    with running_engine("--delay", "3", "--debug-routes", flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(clone, gw.url, reference)  # occupies the only engine for ~3 s
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["engines"][0]["in_flight"] == 1)
            wait_until(lambda: engine_stats(engine.url)["in_flight"] == 1)  # counted by the engine too
            seen_by_engine = engine_stats(engine.url)["requests"]
            with pytest.raises(httpx.ReadTimeout):  # this client gives up while queued
                clone(gw.url, reference, timeout=1.0)
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["queue_depth"] == 0)
            assert first.result().status_code == 200
        set_engine_faults(engine.url, delay=0.0)
        # A wrongly kept waiter would have taken the engine as soon as the first request ended, before this
        # one was sent (first come, first served): the engine would count it before this request.
        assert clone(gw.url, reference).status_code == 200
        assert httpx.get(f"{gw.url}/readyz").json()["engines"][0]["in_flight"] == 0
        assert engine_stats(engine.url)["requests"] == seen_by_engine + 1  # the abandoned one never ran
