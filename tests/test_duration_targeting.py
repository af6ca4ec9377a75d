"""Duration targeting and the result cache end to end: the real gateway on a socket, a CPU engine subprocess
(its speed knob is Piper's length scale, its seed replays Piper's noise exactly)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.audio.stretch import trim_edge_silence
from tests.gateway_support import CLONE_TEXT, GatewayServer, clone, fast_settings, running_gateway
from tests.support import (
    EngineProcess,
    assert_error,
    assert_speech,
    decode_wav,
    engine_stats,
    measured_median_f0,
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, shared: Path) -> Iterator[GatewayServer]:
    with running_gateway(fast_settings(shared, [engine_v2.url])) as gw:
        yield gw


def body_audio(response: httpx.Response) -> tuple[dict[str, Any], np.ndarray, int]:
    assert response.status_code == 200, response.text
    body = response.json()
    samples, rate = decode_wav(base64.b64decode(body["output_audio_base64"]))
    return body, samples, rate


def last_loud(samples: np.ndarray) -> int:
    """Index of the last sample of speech (louder than -34 dBFS)."""
    return int(np.flatnonzero(np.abs(samples) > 0.02)[-1])


def audio_seconds(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^gateway_audio_seconds_total (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def engine_requests(engine: EngineProcess) -> int:
    return int(engine_stats(engine.url)["requests"])


def test_a_shorter_target_is_met_with_the_speed_knob_and_a_pitch_keeping_stretch(
    gateway: GatewayServer, reference: bytes
) -> None:
    plain, plain_samples, rate = body_audio(clone(gateway.url, reference, seed="11"))
    assert plain["duration_target"] is None
    assert 2.5 < plain["output_duration"] < 4.5, "the test needs a sentence the engine says in about 3 s"

    body, samples, rate = body_audio(clone(gateway.url, reference, seed="11", target_duration="2.0"))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=1.8, max_seconds=2.2)
    timing = body["duration_target"]
    assert timing["target"] == 2.0 and timing["within_tolerance"] is True
    assert timing["achieved"] == pytest.approx(len(samples) / rate, abs=1e-3) == body["output_duration"]
    assert abs(timing["achieved"] - 2.0) <= 0.05 * 2.0
    # the predictor learned this voice's pace from the plain render: the engine's knob did most of the work
    assert timing["method"] in ("speed", "speed+stretch") and timing["speed"] > 1.2
    assert 0.8 <= timing["stretch"] <= 1.25
    assert measured_median_f0(samples, rate) == pytest.approx(measured_median_f0(plain_samples, rate), rel=0.06)


def test_a_target_out_of_reach_keeps_all_the_speech_and_says_so(gateway: GatewayServer, reference: bytes) -> None:
    body, samples, rate = body_audio(clone(gateway.url, reference, seed="11", target_duration="0.6"))
    timing = body["duration_target"]
    assert timing["within_tolerance"] is False
    assert timing["speed"] == 2.0 and timing["stretch"] == 0.8 and timing["method"] == "speed+stretch"
    assert any("never cut" in warning for warning in body["warnings"]), body["warnings"]
    # the same render without a target, at the same speed: the targeted clip is all its speech (the engine's
    # edge silence aside), 0.8 times as long, and speaking up to its end
    fast, fast_samples, _ = body_audio(clone(gateway.url, reference, seed="11", speed="2.0"))
    speech = trim_edge_silence(fast_samples, rate)
    assert len(samples) == pytest.approx(0.8 * len(speech), rel=0.02)
    assert last_loud(samples) >= len(samples) - round(0.1 * rate)  # its quiet tail fades out last


def test_a_seeded_rerender_comes_from_the_cache_even_after_a_restart(
    gateway: GatewayServer, engine_v2: EngineProcess, shared: Path, reference: bytes
) -> None:
    fields = {"seed": "23", "target_duration": "2.5"}
    first = clone(gateway.url, reference, **fields)
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "miss" and first.json()["cached"] is False
    before = engine_requests(engine_v2)
    audio_before = audio_seconds(gateway.url)

    again = clone(gateway.url, reference, **fields)
    assert again.status_code == 200, again.text
    assert again.headers["x-cache"] == "hit"
    body = again.json()
    assert body["cached"] is True and body["engine"] is None and body["attempts"] == 0
    assert body["output_audio_base64"] == first.json()["output_audio_base64"]
    assert body["duration_target"] == first.json()["duration_target"]
    assert engine_requests(engine_v2) == before
    assert audio_seconds(gateway.url) - audio_before == pytest.approx(body["output_duration"], abs=1e-3)  # once

    with running_gateway(fast_settings(shared, [engine_v2.url])) as restarted:  # a new process's view
        before = engine_requests(engine_v2)  # its start-up probed the engine
        after_restart = clone(restarted.url, reference, **fields)
        assert after_restart.status_code == 200, after_restart.text
        assert after_restart.headers["x-cache"] == "hit"
        assert after_restart.json()["output_audio_base64"] == first.json()["output_audio_base64"]
    assert engine_requests(engine_v2) == before
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert re.search(r'^gateway_result_cache_total\{outcome="hit"\} 1\.0$', metrics, re.MULTILINE), metrics

    for seed in ({}, {"seed": "-1"}):  # no seed, or the engine's "random": not a pure function, not cached
        unseeded = clone(gateway.url, reference, target_duration="2.5", **seed)
        assert unseeded.headers["x-cache"] == "bypass" and unseeded.json()["cached"] is False
    assert engine_requests(engine_v2) == before + 2


def test_openai_speech_uses_the_cache_for_a_seeded_whole_clip(
    gateway: GatewayServer, engine_v2: EngineProcess, reference: bytes
) -> None:
    def speech() -> httpx.Response:
        return httpx.post(f"{gateway.url}/v1/audio/speech", timeout=60, files={"reference_audio": ("r.wav", reference)},
                          data={"input": "A different sentence to say.", "response_format": "mp3", "stream": "false",
                                "seed": "5", "text_language": "en", "prompt_language": "en"})

    first = speech()
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "miss" and "x-engine" in first.headers
    before = engine_requests(engine_v2)
    second = speech()
    assert second.status_code == 200, second.text
    assert second.headers["x-cache"] == "hit" and "x-engine" not in second.headers
    assert second.content == first.content and second.headers["x-audio-duration"] == first.headers["x-audio-duration"]
    assert engine_requests(engine_v2) == before


def test_duration_fields_are_checked_before_any_work(gateway: GatewayServer, reference: bytes) -> None:
    assert_error(clone(gateway.url, reference, target_duration="2", stream="true"), 422, "duration_needs_whole_clip",
                 contains="stream=false")
    assert_error(clone(gateway.url, reference, target_duration="2", speed="1.5"), 422, "conflicting_speed")
    assert_error(clone(gateway.url, reference, target_duration="2", max_stretch="0.9,2.5"), 422, "invalid_request",
                 contains="max_stretch")
    assert_error(clone(gateway.url, reference, target_duration="0"), 422, "invalid_request",
                 contains="target_duration")
    assert_error(clone(gateway.url, reference, target_duration="2", duration_tolerance="1.5"), 422,
                 "invalid_request", contains="duration_tolerance")
    payload = {"text": CLONE_TEXT, "text_language": "en", "target_duration": 3.5, "max_stretch": [1.1, 1.3],
               "reference_audio_base64": base64.b64encode(reference).decode()}
    assert_error(httpx.post(f"{gateway.url}/v1/voice-clone", json=payload, timeout=60), 422, "invalid_request",
                 contains="max_stretch")
    # a form sends the pair as "low,high"
    response = clone(gateway.url, reference, target_duration="3.5", duration_tolerance="0.02", max_stretch="0.9, 1.1")
    body, samples, rate = body_audio(response)
    timing = body["duration_target"]
    assert 0.9 <= timing["stretch"] <= 1.1
    assert timing["within_tolerance"] == (abs(len(samples) / rate - 3.5) <= 0.02 * 3.5)
