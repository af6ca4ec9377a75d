"""VoiceCloner against real CPU-engine processes: flavours, audio, and every error classification.

Faults are injected by the engine itself (start-up flags or `POST /_faults`), never by mocking our code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from gateway.engine import protocol_v1, protocol_v2
from gateway.engine.client import VoiceCloner
from gateway.engine.stream import stream_from_wav
from gateway.engine.types import EngineInfo, SynthesisRequest, SynthesisResult
from gateway.errors import EngineBadResponse, EngineRejected, EngineTimeout, EngineUnavailable
from gateway.languages import normalize_language
from gateway.settings import ModelWeights
from tests.support import (
    EngineProcess,
    assert_speech,
    decode_wav,
    engine_stats,
    engine_stats_async,
    free_port,
    make_reference,
    pool_settings,
    running_engine,
    set_engine_faults,
    synthesis_request,
    wait_until_async,
)

pytestmark = pytest.mark.anyio

TEXT = "Hello there, this is a short test of the voice cloning engine."


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refs")
    return {
        "ok": make_reference(root / "ok.wav", seconds=5.0),
        "long": make_reference(root / "long.wav", seconds=12.0),
        "weights_dir": root,
    }


@pytest.fixture(scope="module")
def v2_engine() -> Iterator[EngineProcess]:
    with running_engine("--debug-routes", flavor="v2") as engine:
        yield engine


@pytest.fixture(scope="module")
def v1_engine() -> Iterator[EngineProcess]:
    with running_engine("--debug-routes", flavor="v1") as engine:
        yield engine


@pytest.fixture
def faulty_v2(v2_engine: EngineProcess) -> Iterator[EngineProcess]:
    """The shared v2 engine, with any fault a test sets cleared afterwards."""
    yield v2_engine
    set_engine_faults(v2_engine.url, fault=None, delay=0.0, fault_after=0)


async def engine_idle(url: str) -> bool:
    return (await engine_stats_async(url))["in_flight"] == 0


@asynccontextmanager
async def cloner(url: str, **overrides: Any) -> AsyncIterator[VoiceCloner]:
    client = VoiceCloner(url, pool_settings([url], **overrides))
    try:
        yield client
    finally:
        await client.aclose()


# ---------------------------------------------------------------------- flavours


async def test_detects_both_flavours(v2_engine: EngineProcess, v1_engine: EngineProcess) -> None:
    async with cloner(v2_engine.url) as v2, cloner(v1_engine.url) as v1:
        assert v2.info.flavor == "unknown"
        assert await v2.detect_flavor() == "v2"
        assert await v1.detect_flavor() == "v1"
        assert (v2.info.flavor, v1.info.flavor) == ("v2", "v1")
        assert await v2.is_available() and await v1.is_available()


async def test_forced_flavour_needs_no_engine() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with cloner(dead, engine_flavor="v1") as client:
        assert client.info.flavor == "v1"
        assert await client.detect_flavor() == "v1"
        assert not await client.is_available()


async def test_version_probe_reads_the_loaded_model(v2_engine: EngineProcess) -> None:
    async with cloner(v2_engine.url) as client:
        await client.detect_flavor()
        assert await client.probe_version() == engine_stats(v2_engine.url)["version"] == "v2"
        assert client.info.version == "v2"


# ---------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("flavor", ["v2", "v1"])
async def test_synthesis_returns_checked_speech(
    flavor: str, v2_engine: EngineProcess, v1_engine: EngineProcess, refs: dict[str, Path]
) -> None:
    engine = v2_engine if flavor == "v2" else v1_engine
    async with cloner(engine.url) as client:
        result = await client.synthesize(synthesis_request(refs["ok"], TEXT), timeout=30)
    assert result.engine.url == engine.url and result.engine.flavor == flavor
    samples, rate = decode_wav(result.wav)
    assert (result.sample_rate, result.frames) == (rate, len(samples))
    assert_speech(samples, rate, expected_rate=32000, min_seconds=1.0, max_seconds=15.0)


@pytest.mark.parametrize("flavor", ["v2", "v1"])
async def test_stream_delivers_decodable_pcm(
    flavor: str, v2_engine: EngineProcess, v1_engine: EngineProcess, refs: dict[str, Path]
) -> None:
    engine = v2_engine if flavor == "v2" else v1_engine
    text = "First sentence of the stream. Second sentence follows. And a third one ends it."
    async with cloner(engine.url) as client, client.stream(synthesis_request(refs["ok"], text), timeout=30) as stream:
        assert stream.sample_rate == 32000
        chunks = [chunk async for chunk in stream.chunks()]
    assert stream.finished and stream.error is None
    assert chunks and all(len(chunk) % 2 == 0 for chunk in chunks)
    samples = np.frombuffer(b"".join(chunks), dtype="<i2").astype(np.float32) / 32768
    assert_speech(samples, stream.sample_rate, expected_rate=32000, min_seconds=1.5, max_seconds=30.0)


async def test_leaving_a_stream_early_stops_the_engine(v2_engine: EngineProcess, refs: dict[str, Path]) -> None:
    text = " ".join(f"Sentence number {n} of a long text that keeps the engine streaming." for n in range(12))
    async with cloner(v2_engine.url) as client:
        async with client.stream(synthesis_request(refs["ok"], text), timeout=60) as stream:
            async for _chunk in stream.chunks():
                break
        assert not stream.finished
        await wait_until_async(lambda: engine_idle(v2_engine.url))  # else the engine kept streaming to nobody
        # the connection pool is still usable
        result = await client.synthesize(synthesis_request(refs["ok"]), timeout=30)
        assert result.frames > 0


# ---------------------------------------------------------------------- weights


async def test_weight_switch_changes_version_and_rate(
    v2_engine: EngineProcess, v1_engine: EngineProcess, refs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    weights_dir = refs["weights_dir"]
    gpt, v3, v2 = (weights_dir / name for name in ("s1v3.ckpt", "s2Gv3.pth", "s2G2333k_v2.pth"))
    for path in (gpt, v3, v2):
        path.write_bytes(b"weights")
    async with cloner(v2_engine.url) as client:
        await client.load_weights(ModelWeights(gpt=str(gpt), sovits=str(v3)))
        assert client.info.version == "v3" and engine_stats(v2_engine.url)["sovits_weights"] == str(v3)
        result = await client.synthesize(synthesis_request(refs["ok"]), timeout=30)
        assert result.sample_rate == 24000
        await client.load_weights(ModelWeights(sovits=str(v2)))
        assert client.info.version == "v2"
        with pytest.raises(EngineRejected) as missing:
            await client.load_weights(ModelWeights(gpt=str(weights_dir / "absent.ckpt")))
        # the weight path is for the operator's log; the client hears which weights failed, not where they live
        assert "absent.ckpt" not in missing.value.message and "engine e0 " in missing.value.message
        assert "absent.ckpt" in caplog.text
    async with cloner(v1_engine.url) as client:
        await client.load_weights(ModelWeights(gpt=str(gpt), sovits=str(v3)))
        assert engine_stats(v1_engine.url)["sovits_weights"] == str(v3)
        result = await client.synthesize(synthesis_request(refs["ok"]), timeout=30)
        assert result.sample_rate == 24000 and client.info.version == "v3"  # learned from the rate
        await client.load_weights(ModelWeights(gpt=str(gpt), sovits=str(v2)))
        with pytest.raises(EngineRejected, match="together"):
            await client.load_weights(ModelWeights(gpt=str(gpt)))


# ---------------------------------------------------------------------- rejections (422, not retried)


async def test_unsupported_language_is_rejected_with_the_engine_message(
    v2_engine: EngineProcess, refs: dict[str, Path]
) -> None:
    async with cloner(v2_engine.url) as client:
        with pytest.raises(EngineRejected) as caught:
            await client.synthesize(synthesis_request(refs["ok"], text_language="xx"), timeout=30)
    error = caught.value
    assert error.status == 422 and not error.retryable
    assert "text_lang: xx is not supported in version v2" in error.message
    assert client.info.version == "v2"


async def test_reference_outside_3_to_10_seconds_is_rejected(v2_engine: EngineProcess, refs: dict[str, Path]) -> None:
    async with cloner(v2_engine.url) as client:
        with pytest.raises(EngineRejected) as caught:
            await client.synthesize(synthesis_request(refs["long"]), timeout=30)
    assert caught.value.code == "reference_duration" and "3-10 second" in caught.value.message


async def test_v1_reference_free_request_never_reaches_the_engine(
    v1_engine: EngineProcess, refs: dict[str, Path]
) -> None:
    before = engine_stats(v1_engine.url)["requests"]
    async with cloner(v1_engine.url) as client:
        with pytest.raises(EngineRejected, match="default reference"):
            await client.synthesize(synthesis_request(refs["ok"], prompt_text=""), timeout=30)
    assert engine_stats(v1_engine.url)["requests"] == before


# ---------------------------------------------------------------------- engine faults (retryable or timeouts)


async def test_reference_the_engine_cannot_see_is_a_deployment_fault(v2_engine: EngineProcess, tmp_path: Path) -> None:
    async with cloner(v2_engine.url) as client:
        with pytest.raises(EngineBadResponse) as caught:
            await client.synthesize(synthesis_request(tmp_path / "nowhere.wav"), timeout=30)
    assert caught.value.retryable and "GATEWAY_ENGINE_SHARED_DIR" in caught.value.message


async def test_stopped_engine_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with cloner(url, engine_flavor="v2") as client:
        with pytest.raises(EngineUnavailable) as caught:
            await client.synthesize(synthesis_request(Path("/x.wav")), timeout=5)
    assert caught.value.retryable and "engine e0 " in caught.value.message and url not in caught.value.message


async def test_engine_dying_mid_request_is_unavailable(refs: dict[str, Path]) -> None:
    with running_engine("--exit-after", "1", flavor="v2") as engine:
        async with cloner(engine.url) as client:
            assert (await client.synthesize(synthesis_request(refs["ok"]), timeout=30)).frames > 0
            with pytest.raises(EngineUnavailable) as caught:
                await client.synthesize(synthesis_request(refs["ok"]), timeout=30)
        assert engine.proc.wait(timeout=10) == 70  # the CPU engine's crash status: it died on the request
    assert caught.value.retryable and "engine e0 " in caught.value.message


async def test_hang_times_out_by_the_deadline(faulty_v2: EngineProcess, refs: dict[str, Path]) -> None:
    set_engine_faults(faulty_v2.url, fault="hang")
    async with cloner(faulty_v2.url) as client:
        with pytest.raises(EngineTimeout) as caught:
            await client.synthesize(synthesis_request(refs["ok"]), timeout=1.0)
    assert not caught.value.retryable and caught.value.status == 504 and "engine e0 " in caught.value.message


async def test_500_is_a_bad_response_and_the_next_request_is_clean(
    faulty_v2: EngineProcess, refs: dict[str, Path]
) -> None:
    set_engine_faults(faulty_v2.url, fault="500")
    async with cloner(faulty_v2.url) as client:
        with pytest.raises(EngineBadResponse) as caught:
            await client.synthesize(synthesis_request(refs["ok"]), timeout=30)
        assert caught.value.retryable and "HTTP 500" in caught.value.message
        set_engine_faults(faulty_v2.url, fault=None)
        # engine-protocol §11: the engine drops the connection after a 500; it must not be reused.
        assert (await client.synthesize(synthesis_request(refs["ok"]), timeout=30)).frames > 0


async def test_silence_placeholder_is_never_a_success(faulty_v2: EngineProcess, refs: dict[str, Path]) -> None:
    set_engine_faults(faulty_v2.url, fault="silence")
    async with cloner(faulty_v2.url) as client:
        with pytest.raises(EngineBadResponse) as caught:
            await client.synthesize(synthesis_request(refs["ok"]), timeout=30)
        assert caught.value.code == "engine_silence" and caught.value.retryable
        with pytest.raises(EngineBadResponse):  # streaming: a 16 kHz header, refused before any audio
            async with client.stream(synthesis_request(refs["ok"]), timeout=30):
                pass


async def test_truncated_body_is_a_bad_response(faulty_v2: EngineProcess, refs: dict[str, Path]) -> None:
    set_engine_faults(faulty_v2.url, fault="truncate")
    async with cloner(faulty_v2.url) as client:
        with pytest.raises(EngineBadResponse) as whole:
            await client.synthesize(synthesis_request(refs["ok"]), timeout=30)
        assert whole.value.retryable
        with pytest.raises(EngineBadResponse) as cut:
            async with client.stream(synthesis_request(refs["ok"]), timeout=30) as stream:
                async for _chunk in stream.chunks():
                    pass
        assert stream.error is cut.value and not stream.finished


async def test_v1_aborted_chunked_body_is_a_bad_response(refs: dict[str, Path]) -> None:
    with running_engine("--fault", "truncate", flavor="v1") as engine:
        async with cloner(engine.url) as client:
            with pytest.raises(EngineBadResponse) as caught:
                await client.synthesize(synthesis_request(refs["ok"]), timeout=30)
    assert caught.value.retryable and "engine e0 " in caught.value.message


@pytest.mark.parametrize("flavor", ["v2", "v1"])
async def test_nothing_to_say_is_never_a_success(
    flavor: str, v2_engine: EngineProcess, v1_engine: EngineProcess, refs: dict[str, Path]
) -> None:
    # Punctuation-only text: api_v2 answers 200 + its 16 kHz placeholder, api.py 200 + a 0-frame WAV.
    engine = v2_engine if flavor == "v2" else v1_engine
    async with cloner(engine.url) as client:
        with pytest.raises(EngineBadResponse) as caught:
            await client.synthesize(synthesis_request(refs["ok"], "..."), timeout=30)
    assert caught.value.retryable


# ---------------------------------------------------------------------- the pure request mappings


@pytest.mark.parametrize(
    ("cut_punc", "method"), [(None, "cut5"), ("", "cut0"), ("。", "cut3"), (".", "cut4"), (",.!?", "cut5")]
)
def test_v2_body_is_explicit_lowercase_and_null_free(cut_punc: str | None, method: str) -> None:
    req = SynthesisRequest(
        text="Hi.", text_language="EN", reference_path="/r.wav", prompt_language="中文", cut_punc=cut_punc, speed=1.2
    )
    body, warnings = protocol_v2.build_tts_body(req, streaming=True)
    assert None not in body.values()
    assert (body["text_lang"], body["prompt_lang"], body["prompt_text"]) == ("en", "all_zh", "")
    assert (body["text_split_method"], body["speed_factor"], body["top_k"]) == (method, 1.2, 15)
    assert body["streaming_mode"] is True and body["media_type"] == "wav"
    assert bool(warnings) == (cut_punc == ",.!?")


def test_v1_body_maps_split_methods_and_reports_dropped_knobs() -> None:
    req = SynthesisRequest(
        text="Hi.",
        text_language="en",
        reference_path="/r.wav",
        prompt_text="ref",
        prompt_language="en",
        text_split_method="cut4",
        seed=7,
    )
    body, warnings = protocol_v1.build_synthesis_body(req)
    assert body["cut_punc"] == "." and body["refer_wav_path"] == "/r.wav" and None not in body.values()
    assert warnings == ["seed is not supported by api.py engines and was ignored"]
    default, _ = protocol_v1.build_synthesis_body(
        SynthesisRequest(text="Hi.", text_language="en", reference_path="/r.wav", prompt_text="ref")
    )
    assert "cut_punc" not in default  # the engine's own -cp setting applies


# ---------------------------------------------------------------------- pure helpers


async def test_v1_stream_hands_on_32_bit_pcm_as_16_bit(tmp_path: Path) -> None:
    """api.py started with `-st int32` answers 32-bit PCM; stream consumers always get int16."""
    rate = 32000
    samples = (np.sin(np.linspace(0, 200, rate)) * 0.5).astype(np.float32)
    path = tmp_path / "int32.wav"
    sf.write(str(path), samples, rate, subtype="PCM_32")
    data = path.read_bytes()
    info = EngineInfo(url="http://engine", flavor="v1")
    result = SynthesisResult(wav=data, sample_rate=rate, frames=rate, engine=info)
    stream = stream_from_wav(result, asyncio.get_running_loop().time() + 10)
    pcm = b"".join([chunk async for chunk in stream.chunks()])
    assert len(pcm) == 2 * rate and stream.stop_grace() == 0.0
    decoded = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    assert np.max(np.abs(decoded - samples)) < 1e-3


@pytest.mark.parametrize(
    ("spelling", "code"),
    [("en_US", "en"), ("zh_CN", "zh"), ("EN-us", "en"), ("all_zh", "all_zh"), ("auto_yue", "auto_yue")],
)
def test_normalize_language_accepts_locale_spellings(spelling: str, code: str) -> None:
    assert normalize_language(spelling) == code
