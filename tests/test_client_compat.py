"""The seed's `VoiceCloner` (m4t, seed 002) over the gateway: a pipeline written for it runs unchanged but for
its import, with the seed's coroutine methods, arguments (by keyword, as its callers pass them), one shared
instance per URL, the default reference and its failures answered with None/False; results are the JSON fields
of `/v1/voice-clone`."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.client import Client, VoiceCloner, get_voice_cloner
from tests.client_support import assert_clip, gateway_before
from tests.gateway_support import GatewayServer
from tests.support import EngineProcess, free_port, make_reference

#: the fields the seed's endpoint answered with (seed 002, "Response Format")
SEED_FIELDS = {"task", "output_audio_base64", "output_sample_rate", "text_length", "output_duration",
               "processing_time", "service_available"}
TEXT = "Hello from the seed pipeline."


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with gateway_before(engine_v2, tmp_path_factory) as gw:
        yield gw


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("refs")
    return make_reference(folder / "a.wav", seconds=4.0, f0=110.0), make_reference(folder / "b.wav", f0=200.0)


def assert_seed_answer(answer: dict[str, Any] | None, text: str = TEXT) -> dict[str, Any]:
    assert answer is not None
    assert set(answer) >= SEED_FIELDS, sorted(answer)
    assert answer["service_available"] is True and answer["text_length"] == len(text)
    seconds = assert_clip(base64.b64decode(answer["output_audio_base64"]), rate=answer["output_sample_rate"])
    assert abs(seconds - answer["output_duration"]) < 0.01
    return answer


async def seed_pipeline(cloner: VoiceCloner, ref: Path, other: Path, other_bytes: bytes) -> list[Any]:
    """Written the way the seed's callers use it: keyword arguments, awaited coroutines, None checks."""
    assert await cloner.is_available()
    from_file = await cloner.clone_voice_from_audio(
        text=TEXT, text_language="en", refer_wav_path=str(ref), prompt_text="A reference.", prompt_language="en")
    from_bytes = await cloner.clone_voice_from_bytes(
        text=TEXT, text_language="en", refer_audio_bytes=other_bytes, prompt_text="Another one.",
        prompt_language="en", cut_punc=",.")
    changed = await cloner.change_default_reference(
        refer_wav_path=str(other), prompt_text="Another one.", prompt_language="en")
    with_default = await cloner.clone_voice_with_default(text=TEXT, text_language="en")
    return [from_file, from_bytes, changed, with_default]


def test_a_seed_pipeline_runs_against_the_gateway(gateway: GatewayServer, refs: tuple[Path, Path]) -> None:
    ref, other = refs
    pipeline = seed_pipeline(get_voice_cloner(gateway.url), ref, other, other.read_bytes())
    from_file, from_bytes, changed, with_default = asyncio.run(pipeline)
    assert_seed_answer(from_file)
    assert assert_seed_answer(from_bytes)["reference_id"] != from_file["reference_id"]
    assert changed is True
    assert assert_seed_answer(with_default)["reference_id"] == from_bytes["reference_id"]
    with Client(gateway.url) as client:  # the default changed for every client, as /change_refer did
        default = client.get_voice(str(client.default_voice()))
        assert default.prompt_text == "Another one." and with_default["voice_id"] == default.id
        voices_before = len(client.list_voices())
    cloner = VoiceCloner(gateway.url)
    assert (cloner.default_refer_wav, cloner.default_refer_text, cloner.default_refer_language) == (
        str(other), "Another one.", "en")
    # a second event loop (asyncio.run per request is common in pipelines), the same reference again: no new voice
    assert asyncio.run(cloner.change_default_reference(str(other), "Another one.", "en")) is True
    with Client(gateway.url) as client:
        assert len(client.list_voices()) == voices_before and client.default_voice() == default.id


def test_one_shared_instance_per_url(gateway: GatewayServer, monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_voice_cloner(gateway.url)
    assert VoiceCloner(gateway.url) is first and get_voice_cloner(gateway.url + "/") is first
    other_url = gateway.url.replace("127.0.0.1", "localhost")
    assert VoiceCloner(other_url) is not first and VoiceCloner(other_url).api_url == other_url
    monkeypatch.setenv("GATEWAY_URL", other_url)
    assert get_voice_cloner() is VoiceCloner(other_url)


def test_the_constructors_default_reference_is_uploaded(gateway: GatewayServer, refs: tuple[Path, Path]) -> None:
    ref, _ = refs
    url = gateway.url.replace("127.0.0.1", "localhost") + "/v1/.."  # another spelling: another shared instance
    cloner = VoiceCloner(url, default_refer_wav=str(ref), default_refer_text="A reference.",
                         default_refer_language="en")
    answer = assert_seed_answer(asyncio.run(cloner.clone_voice_with_default(TEXT, "en")))
    assert answer["voice_id"] is None
    assert answer["reference_id"] == assert_seed_answer(asyncio.run(
        cloner.clone_voice_from_audio(TEXT, "en", str(ref), "A reference.", "en")))["reference_id"]


def test_failures_answer_none_or_false_like_the_seed(
    gateway: GatewayServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = VoiceCloner(f"http://127.0.0.1:{free_port()}")
    ref = make_reference(tmp_path / "ref.wav", seconds=4.0)

    async def attempts(cloner: VoiceCloner) -> list[Any]:
        return [await cloner.is_available(),
                await cloner.clone_voice_from_audio(TEXT, "en", str(ref), "", "en"),
                await cloner.change_default_reference(str(ref), "", "en")]

    with caplog.at_level(logging.ERROR, logger="gateway.client.compat"):
        assert asyncio.run(attempts(down)) == [False, None, False]
    assert "cannot connect to the gateway" in caplog.text
    up = VoiceCloner(gateway.url)
    missing = asyncio.run(up.clone_voice_from_audio(TEXT, "en", str(tmp_path / "missing.wav"), "", "en"))
    short = asyncio.run(up.clone_voice_from_bytes(TEXT, "en", make_reference(tmp_path / "s.wav", 1.0).read_bytes(),
                                                  "", "en"))
    assert missing is None and short is None and "reference_too_short" in caplog.text
