"""`VoiceCloner`: m4t's class (seed 002) over the gateway, so a pipeline written for it switches in one line:

    from voice_cloner import get_voice_cloner            # before: GPT-SoVITS api.py at :9880
    from gateway.client import get_voice_cloner          # after: the gateway at :8000 (GATEWAY_URL)

Kept from the seed: the constructor and method signatures, coroutine methods, one shared instance (now one
per URL, where the seed silently returned the first one for any URL), failures logged and answered with None or
False instead of raised. Clone methods return the JSON of `/v1/voice-clone` (the seed endpoint's fields:
`output_audio_base64`, `output_sample_rate`, `output_duration`, ..., plus the gateway's). The default reference is
a library voice made the gateway's default, as the seed made it the engine's default with `/change_refer`.
For typed errors and retries use `gateway.client.AsyncClient` directly.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar

import anyio

from gateway.client._async import AsyncClient
from gateway.client._calls import AudioInput, base_url
from gateway.client._errors import ConflictError, GatewayAPIError

log = logging.getLogger("gateway.client.compat")


class VoiceCloner:
    """One instance per gateway URL: `VoiceCloner(url)` twice gives the same object (settings of the first)."""

    _instances: ClassVar[dict[str, VoiceCloner]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    api_url: str
    default_refer_wav: str | None
    default_refer_text: str | None
    default_refer_language: str
    _default_voice_id: str | None

    def __new__(
        cls,
        api_url: str | None = None,
        default_refer_wav: str | None = None,
        default_refer_text: str | None = None,
        default_refer_language: str = "zh",
    ) -> VoiceCloner:
        url = base_url(api_url)
        with cls._lock:
            instance = cls._instances.get(url)
            if instance is None:
                instance = super().__new__(cls)
                instance.api_url = url
                instance.default_refer_wav = default_refer_wav
                instance.default_refer_text = default_refer_text
                instance.default_refer_language = default_refer_language
                instance._default_voice_id = None
                cls._instances[url] = instance
        return instance

    def _client(self, **options: Any) -> AsyncClient:
        # a client per call, as the seed did: the shared instance may be used from several event loops
        # (asyncio.run per request), and an httpx client belongs to the loop it was first used on
        return AsyncClient(self.api_url, **options)

    async def is_available(self) -> bool:
        """True when the gateway answers and an engine can serve (`/readyz`); never raises. A probe: no retries,
        and the seed's 2 s timeout."""
        try:
            async with self._client(timeout=2.0, max_retries=0) as client:
                return (await client.health()).ready
        except GatewayAPIError as exc:
            log.warning("gateway at %s not available: %s", self.api_url, exc)
            return False

    async def _clone(
        self, text: str, reference: AudioInput | None, voice: str | None, **fields: Any
    ) -> dict[str, Any] | None:
        try:
            async with self._client() as client:
                result = await client.clone(text, reference, voice=voice, **fields)
        except (GatewayAPIError, OSError) as exc:
            log.error("voice cloning failed: %s", exc)
            return None
        return result.as_json()

    async def clone_voice_from_audio(
        self, text: str, text_language: str, refer_wav_path: str, prompt_text: str, prompt_language: str,
        cut_punc: str | None = None,
    ) -> dict[str, Any] | None:
        """Speak `text` in the voice of the recording at `refer_wav_path` (a file on this machine, uploaded)."""
        return await self._clone(text, Path(refer_wav_path), None, text_language=text_language,
                                 prompt_text=prompt_text, prompt_language=prompt_language, cut_punc=cut_punc)

    async def clone_voice_from_bytes(
        self, text: str, text_language: str, refer_audio_bytes: bytes, prompt_text: str, prompt_language: str,
        cut_punc: str | None = None,
    ) -> dict[str, Any] | None:
        return await self._clone(text, refer_audio_bytes, None, text_language=text_language,
                                 prompt_text=prompt_text, prompt_language=prompt_language, cut_punc=cut_punc)

    async def clone_voice_with_default(
        self, text: str, text_language: str, cut_punc: str | None = None
    ) -> dict[str, Any] | None:
        """The reference set by `change_default_reference`, else the constructor's `default_refer_wav`, else the
        gateway's default voice (the seed answered None there; the gateway's default is api.py's `-dr`)."""
        if self._default_voice_id is None and self.default_refer_wav:
            return await self.clone_voice_from_audio(
                text, text_language, self.default_refer_wav, self.default_refer_text or "",
                self.default_refer_language, cut_punc)
        return await self._clone(text, None, self._default_voice_id, text_language=text_language, cut_punc=cut_punc)

    async def change_default_reference(self, refer_wav_path: str, prompt_text: str, prompt_language: str) -> bool:
        """Register the recording as a library voice and make it the gateway's default voice (for every client,
        as `/change_refer` changed the engine's default for everyone); False when that failed."""
        try:
            audio = await anyio.Path(refer_wav_path).read_bytes()
            digest = hashlib.sha256(audio + f"\0{prompt_text}\0{prompt_language}".encode()).hexdigest()
            name = f"default-{digest[:16]}"  # the same reference and transcript → the same voice, not a new one
            async with self._client() as client:
                try:
                    voice_id = (await client.create_voice(
                        name, audio, prompt_text=prompt_text, prompt_language=prompt_language,
                        description=f"set by VoiceCloner.change_default_reference from {Path(refer_wav_path).name}",
                    )).id
                except ConflictError:
                    voice_id = next(v.id for v in await client.list_voices() if v.name == name)
                await client.set_default_voice(voice_id)
        except (GatewayAPIError, OSError, StopIteration) as exc:
            log.error("changing the default reference failed: %s", exc)
            return False
        self.default_refer_wav, self.default_refer_text = refer_wav_path, prompt_text
        self.default_refer_language, self._default_voice_id = prompt_language, voice_id
        return True


def get_voice_cloner(api_url: str | None = None, **kwargs: Any) -> VoiceCloner:
    """The shared `VoiceCloner` for `api_url` (default: `GATEWAY_URL`, then http://127.0.0.1:8000)."""
    return VoiceCloner(api_url, **kwargs)
