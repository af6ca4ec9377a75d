"""Engine faults seen through `POST /v1/voice-clone`: each maps to a clear 5xx, never a fake success."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway_support import CLONE_TEXT, clone, fast_settings, gateway_process, running_gateway
from tests.support import assert_error, running_engine, wait_until


def test_engine_stopped_is_503_with_retry_after(tmp_path: Path, reference: bytes) -> None:
    with running_engine(flavor="v2") as engine:
        url = engine.url
        with running_gateway(fast_settings(tmp_path, [url])) as gw:
            engine.stop()
            response = clone(gw.url, reference)
            error = assert_error(response, 503, "engine_unavailable")
            assert error["service_available"] is False
            assert int(response.headers["retry-after"]) >= 1
            assert url in error["message"] or url == error.get("engine")
            ready = httpx.get(f"{gw.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["engines"][0]["state"] in {"down", "cooling_down"}


def test_engine_killed_mid_request_is_503(tmp_path: Path, reference: bytes) -> None:
    with running_engine("--exit-after", "0", flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        response = clone(gw.url, reference)
        assert_error(response, 503, "engine_unavailable")  # the request never ran: retryable, Retry-After
        assert "retry-after" in response.headers
        assert engine.proc.wait(10) is not None


def test_hanging_engine_times_out_with_504(tmp_path: Path, reference: bytes) -> None:
    with running_engine("--fault", "hang", flavor="v2") as engine, running_gateway(
        fast_settings(tmp_path, [engine.url])
    ) as gw:
        response = httpx.post(
            f"{gw.url}/v1/voice-clone",
            data={"text": CLONE_TEXT, "text_language": "en"},
            files={"audio": ("r.wav", reference)},
            headers={"X-Request-Timeout": "2"},
            timeout=30,
        )
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
        assert "retry-after" in response.headers
        assert error.get("engine") == engine.url or engine.url in error["message"]


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
            seen_by_engine = httpx.get(f"{engine.url}/_stats").json()["requests"]
            with pytest.raises(httpx.ReadTimeout):  # this client gives up while queued
                httpx.post(f"{gw.url}/v1/voice-clone", data={"text": CLONE_TEXT, "text_language": "en"},
                           files={"audio": ("r.wav", reference)}, timeout=1.0)
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["queue_depth"] == 0)
            assert first.result().status_code == 200
        time.sleep(0.5)  # room for a wrongly kept waiter to be dispatched, which the checks below would see
        assert httpx.get(f"{gw.url}/readyz").json()["engines"][0]["in_flight"] == 0
        assert httpx.get(f"{engine.url}/_stats").json()["requests"] == seen_by_engine  # the abandoned one never ran
