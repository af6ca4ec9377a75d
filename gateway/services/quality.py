"""Quality-checked synthesis: every whole clip is measured (audio/quality.py), and a failing one is rendered
again with a new seed when the request allows it (`quality_retries`).

The pool already retries engine *faults* on other engines; this is a regeneration on top, for answers that
are well-formed and still wrong (GPT-SoVITS samples randomly: now and then a clip is empty, cut short,
endless or in another voice). When every attempt fails, the best one is returned with `ok: false` rather
than an error: the client asked for audio, got the closest we could make, and can see why it is suspect
(an error would throw away audio that may well be usable, e.g. a clip flagged only for its pace).

`min_similarity` needs a speaker encoder (the `quality` extra): the output's embedding is compared with the
reference's, which is embedded once per request. Embedding runs in a worker thread.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import soundfile
import soxr

from gateway.audio.quality import QualityLimits, QualityReport, check
from gateway.audio.wav import wav_samples
from gateway.engine.selection import Priority
from gateway.engine.types import SynthesisRequest, SynthesisResult
from gateway.services.context import Services
from gateway.speaker import ENCODER_RATE, SpeakerEncoder, cosine

#: Clips up to this size (16 s of 32 kHz 16-bit mono) are checked on the event loop: the checks take ~0.04 ms
#: per second of audio (bench/quality), so up to ~0.6 ms, about a worker-thread round trip under load; larger
#: clips and every embedding go to a thread (DESIGN §8).
INLINE_CHECK_BYTES = 1 << 20


@dataclass(frozen=True)
class QualityOptions:
    """What a request asks of its clip beyond the always-on checks."""

    retries: int = 0  # renders after the first when a clip fails (new random seed each)
    min_similarity: float | None = None  # speaker similarity the clip must reach (needs an encoder)
    reference_file: Path | None = None  # the gateway-side main reference, to embed for min_similarity


@dataclass
class Checked:
    """The chosen render, its report, and every attempt's report (in order)."""

    result: SynthesisResult
    report: QualityReport
    attempts: list[QualityReport]

    def as_dict(self) -> dict[str, Any]:
        return {**self.report.as_dict(), "attempts": [a.as_dict() for a in self.attempts]}


async def encoder_for(services: Services, options: QualityOptions) -> SpeakerEncoder | None:
    """The speaker encoder when `min_similarity` asks for one (loaded on first use); 501 when the quality extra
    is not installed, 503 when its model failed to load."""
    if options.min_similarity is None:
        return None
    return await services.speakers.require()


def limits_of(services: Services) -> QualityLimits:
    s = services.settings
    return QualityLimits(s.quality_max_silence, s.quality_max_clipping, s.quality_min_rate_ratio,
                         s.quality_max_rate_ratio)


def _at_encoder_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    out: np.ndarray = soxr.resample(mono.astype(np.float32), rate, ENCODER_RATE) if rate != ENCODER_RATE else mono
    return out.astype(np.float32)


def embed_file(encoder: SpeakerEncoder, path: Path) -> np.ndarray:
    """The embedding of an audio file (blocking)."""
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    return encoder.embed(_at_encoder_rate(samples, int(rate)))


def assess(
    wav: bytes, request: SynthesisRequest, limits: QualityLimits, min_similarity: float | None,
    encoder: SpeakerEncoder | None, reference: np.ndarray | None,
) -> QualityReport:
    """Check one engine WAV (blocking: decode, measure, maybe embed)."""
    samples, rate = wav_samples(wav)
    report = check(samples, rate, request.text, request.text_language, request.speed or 1.0, limits)
    if encoder is not None and reference is not None and min_similarity is not None:
        report.similarity = cosine(encoder.embed(_at_encoder_rate(samples, rate)), reference)
        if report.similarity < min_similarity:
            report.problems.append("low_similarity")
    return report


def _rank(report: QualityReport) -> tuple[int, float]:
    """Higher is better: fewer problems, then a closer voice."""
    return (-len(report.problems), report.similarity if report.similarity is not None else 0.0)


async def synthesize_checked(
    services: Services, request: SynthesisRequest, options: QualityOptions, *, timeout: float | None,
    priority: Priority = "interactive",
) -> Checked:
    """Render, check, and while the clip fails and `options.retries` allow, render again with a new seed.
    Engine time and attempts of every render add up on the returned result."""
    encoder = await encoder_for(services, options)
    limits = limits_of(services)
    started = time.monotonic()
    reference = None
    if encoder is not None and options.reference_file is not None:
        reference = await anyio.to_thread.run_sync(embed_file, encoder, options.reference_file)
    attempts: list[QualityReport] = []
    best: tuple[SynthesisResult, QualityReport] | None = None
    engine_seconds, engine_attempts = 0.0, 0
    for index in range(options.retries + 1):
        left = None if timeout is None else timeout - (time.monotonic() - started)
        if index and left is not None and left <= 0:
            break  # out of time: the best so far is the answer
        attempt = request if index == 0 else dataclasses.replace(request, seed=secrets.randbelow(2**32))
        result = await services.pool.synthesize(attempt, timeout=left, priority=priority)
        if encoder is None and len(result.wav) <= INLINE_CHECK_BYTES:
            report = assess(result.wav, attempt, limits, None, None, None)
        else:
            report = await anyio.to_thread.run_sync(
                assess, result.wav, attempt, limits, options.min_similarity, encoder, reference
            )
        report.seed = attempt.seed if attempt.seed not in (None, -1) else None
        attempts.append(report)
        engine_seconds += result.engine_seconds
        engine_attempts += result.attempts
        services.metrics.quality_checks.labels(outcome="ok" if report.ok else "flagged").inc()
        if best is None or _rank(report) > _rank(best[1]):
            best = (result, report)
        if report.ok:
            break
    assert best is not None  # the first attempt always runs
    result, report = best
    result.engine_seconds, result.attempts = engine_seconds, engine_attempts
    return Checked(result, report, attempts)
