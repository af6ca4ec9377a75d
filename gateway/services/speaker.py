"""Speaker embeddings as the routes and the voice library use them.

One encoder per process, loaded on first use (importing torch and GE2E costs ~2 s and ~210 MB: a gateway that
never embeds never pays it). Embeds run in worker threads, each on one torch thread, at most one per two cores
side by side: the event loop never waits on them and keeps a core for itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import anyio
import numpy as np
import soxr

from gateway.audio.intake import PreparedReference
from gateway.audio.wav import wav_samples
from gateway.errors import GatewayError
from gateway.settings import Settings
from gateway.speaker import ENCODER_RATE, SpeakerEncoder, cosine, load_encoder
from gateway.voices.embeddings import VoiceEmbeddings
from gateway.voices.store import Voice, VoiceStore

log = logging.getLogger("gateway.speaker")

#: Longest audio embedded at once; more says nothing new about a voice and only costs CPU (~0.03 s per second).
MAX_EMBED_SECONDS = 60.0
#: Shortest audio worth embedding: GE2E looks at 1.6 s windows, ECAPA's statistics need a few frames.
MIN_EMBED_SECONDS = 0.1
#: Voices a duplicate warning names at most (the closest first).
MAX_NAMED_DUPLICATES = 3


class EncoderMissing(GatewayError):
    """501: this gateway was installed without the `quality` extra; retrying will not help."""

    status, code = 501, "speaker_encoder_unavailable"


class EncoderFailed(GatewayError):
    """503: the configured encoder did not load (a broken GATEWAY_SPEAKER_MODEL_DIR); the log says why."""

    status, code = 503, "speaker_encoder_failed"


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # float32, L2-normalised
    model: str
    duration: float  # seconds of audio embedded


def to_encoder_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz (soxr's high quality), as every encoder takes it."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if rate == ENCODER_RATE:
        return samples
    return np.asarray(soxr.resample(samples, rate, ENCODER_RATE), dtype=np.float32)


class Speakers:
    """This process's encoder, loaded once, and the voices' stored embeddings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.voice_embeddings = VoiceEmbeddings(settings.voices_dir)
        self._encoder: SpeakerEncoder | None = None
        self._loaded = False
        self._failure: str | None = None
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(max(1, (os.cpu_count() or 2) // 2))

    async def encoder(self) -> SpeakerEncoder | None:
        """The encoder; None without the `quality` extra. A load failure is kept: the operator fixes the model
        directory and restarts, rather than every request paying for another failed load."""
        if not self._loaded:
            async with self._lock:
                if not self._loaded:
                    try:
                        self._encoder = await anyio.to_thread.run_sync(load_encoder, self.settings)
                    except Exception as exc:  # noqa: BLE001 - any load failure: reported the same way
                        log.error("the %s speaker encoder did not load: %s", self.settings.speaker_encoder, exc)
                        self._failure = str(exc)
                    else:
                        encoder = self._encoder
                        log.info("speaker encoder: %s", f"{encoder.name} ({encoder.dim}-d)" if encoder else "none")
                    self._loaded = True
        if self._failure is not None:
            raise EncoderFailed(
                f"the {self.settings.speaker_encoder} speaker encoder failed to load; the gateway log says why"
            )
        return self._encoder

    def install(self, encoder: SpeakerEncoder | None) -> None:
        """Use `encoder` (None: none) instead of loading the configured one: for tests and embedding tools."""
        self._encoder, self._loaded, self._failure = encoder, True, None

    async def require(self) -> SpeakerEncoder:
        encoder = await self.encoder()
        if encoder is None:
            raise EncoderMissing(
                "speaker embeddings and min_similarity need the gateway's 'quality' extra (torch CPU, "
                "webrtcvad-wheels and resemblyzer), which this gateway was installed without"
            )
        return encoder

    async def embed(self, samples: np.ndarray, rate: int, encoder: SpeakerEncoder | None = None) -> Embedding:
        """Resample and embed off the event loop, at most one embed per two cores at a time."""
        encoder = encoder or await self.require()
        chosen = encoder

        def work() -> np.ndarray:
            return chosen.embed(to_encoder_rate(samples, rate))

        vector = await anyio.to_thread.run_sync(work, limiter=self._limiter)
        return Embedding(vector, encoder.name, len(samples) / rate)

    async def voice_embedding(self, store: VoiceStore, voice: Voice, encoder: SpeakerEncoder) -> np.ndarray | None:
        """The voice's stored embedding for this encoder; computed from its reference and stored when missing
        (voices made before the extra was installed, or with the other encoder). None if the reference is gone."""
        stored = await anyio.to_thread.run_sync(self.voice_embeddings.load, voice.id, encoder.name, encoder.dim)
        if stored is not None:
            return stored
        try:
            data = await anyio.to_thread.run_sync(store.reference_path(voice).read_bytes)
            samples, rate = wav_samples(data)  # our own PCM16 WAV: a view, no decoding
        except (OSError, ValueError) as exc:
            log.warning("cannot read the reference of voice %s to embed it: %s", voice.id, exc)
            return None
        embedding = await self.embed(samples, rate, encoder)
        await self.store_voice_embedding(voice.id, embedding)
        return embedding.vector

    async def store_voice_embedding(self, voice_id: str, embedding: Embedding) -> None:
        """Best effort: a voice without a stored embedding gets it computed again when next needed."""
        try:
            await anyio.to_thread.run_sync(self.voice_embeddings.save, voice_id, embedding.model, embedding.vector)
        except OSError as exc:
            log.warning("cannot store the embedding of voice %s: %s", voice_id, exc)

    async def similar_voices(self, store: VoiceStore, embedding: Embedding, encoder: SpeakerEncoder) -> list[str]:
        """Warnings naming the existing voices at least `voice_duplicate_similarity` alike (closest first)."""
        threshold = self.settings.voice_duplicate_similarity
        matches: list[tuple[float, Voice]] = []
        for voice in await anyio.to_thread.run_sync(store.list):
            vector = await self.voice_embedding(store, voice, encoder)
            if vector is not None and (similarity := cosine(embedding.vector, vector)) >= threshold:
                matches.append((similarity, voice))
        matches.sort(key=lambda match: -match[0])
        return [
            f"the reference sounds like the existing voice {voice.name!r} ({voice.id}): speaker similarity "
            f"{similarity:.2f} (warned from {threshold:g})"
            for similarity, voice in matches[:MAX_NAMED_DUPLICATES]
        ]

    async def embed_new_voice(
        self, store: VoiceStore, reference: PreparedReference
    ) -> tuple[Embedding | None, list[str]]:
        """A new voice's embedding and its duplicate warnings; (None, []) without a working encoder, since a
        voice library must keep working on a gateway without the extra (or with a broken model directory)."""
        try:
            encoder = await self.encoder()
        except EncoderFailed:
            return None, []
        if encoder is None:
            return None, []
        samples, rate = wav_samples(reference.wav)
        embedding = await self.embed(samples, rate, encoder)
        return embedding, await self.similar_voices(store, embedding, encoder)
