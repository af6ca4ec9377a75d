"""Subtitles in, a timed voice track out: a 20-line SRT with two speakers and the original recording,
through a real gateway and CPU engines; the track is decoded and measured."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from gateway.audio.wav import pcm16_wav
from tests.dub_support import SPEAKER_F0, onsets, source_track, two_speaker_script, two_speaker_srt
from tests.gateway_support import fast_settings, running_gateway
from tests.job_support import wait_for_job
from tests.support import decode_wav, measured_median_f0, running_engine

RATE = 32000


def _original_srt(count: int) -> str:
    """The same cues as two_speaker_srt, carrying the original transcript (what the source track says)."""
    translated = two_speaker_srt(count).split("\n\n")
    script = two_speaker_script(count)
    return "\n\n".join(
        block.rsplit("\n", 1)[0] + f"\n{line.speaker}: {line.source_text}"
        for block, line in zip((b.rstrip("\n") for b in translated), script, strict=True)
    ) + "\n"


def test_an_srt_with_two_speakers_and_their_source_track_becomes_a_timed_voice_track(tmp_path: Path) -> None:
    script = two_speaker_script(20)
    source = pcm16_wav(source_track(script, RATE), RATE)
    with running_engine() as first, running_engine() as second:
        settings = fast_settings(tmp_path / "shared", [first.url, second.url], job_concurrency=3)
        with running_gateway(settings) as gw:
            accepted = httpx.post(
                f"{gw.url}/v1/jobs",
                data={"language": "en", "source_language": "en", "seed": "7"},
                files={
                    "subtitles": ("dub.srt", two_speaker_srt(20).encode()),
                    "source_subtitles": ("orig.srt", _original_srt(20).encode()),
                    "source_audio": ("original.wav", source, "audio/wav"),
                },
                timeout=120,
            )
            assert accepted.status_code == 202, accepted.text
            done = wait_for_job(gw.url, accepted.json()["id"], timeout=400)
            assert done["status"] == "done", done
            track = httpx.get(done["track_url"], timeout=60)
            segment_audio = {s["id"]: decode_wav(httpx.get(s["url"], timeout=30).content) for s in done["segments"]}

    # each speaker's reference was cut from their own lines; BOB's lines are all < 3 s, so several were joined
    speakers = done["speakers"]
    assert set(speakers) == {"ALICE", "BOB"}
    assert all(ref["source"] == "source_audio" and ref["reference_id"] for ref in speakers.values()), speakers
    assert len(speakers["BOB"]["spans"]) >= 2 and "Original line" in speakers["BOB"]["prompt_text"]

    # every line lasts within the tolerance of its slot
    for segment, line in zip(done["segments"], script, strict=True):
        slot = line.end - line.start
        timing = segment["timing"]
        assert timing["target"] == round(slot, 4) or abs(timing["target"] - slot) < 1e-3
        assert timing["within_tolerance"], (segment["id"], str(timing))
        samples, rate = segment_audio[segment["id"]]
        assert abs(len(samples) / rate - slot) <= 0.05 * slot + 0.01, (segment["id"], len(samples) / rate, slot)

    # each line speaks with its speaker's voice (the CPU engine follows the reference's pitch)
    def pitch(speaker: str) -> float:
        return float(np.median([measured_median_f0(*segment_audio[s["id"]])
                                for s in done["segments"] if s["speaker"] == speaker]))

    assert pitch("ALICE") > pitch("BOB") * 1.2, (pitch("ALICE"), pitch("BOB"), SPEAKER_F0)

    # on the track, every line starts within 10 ms of its cue
    samples, rate = decode_wav(track.content)
    found = onsets(samples, rate, threshold=0.003)  # -50 dBFS: where a line's sound starts (silence is 0)
    for line in script:
        nearest = min(found, key=lambda onset: abs(onset - line.start))
        assert abs(nearest - line.start) <= 0.010, (line, nearest)
    assert len(samples) / rate >= script[-1].end - 0.2 * (script[-1].end - script[-1].start)
    assert done["overlaps"] == []
