"""Python client for sovits-gateway: `Client` (blocking), `AsyncClient` (asyncio), typed errors, and the seed's
`VoiceCloner` for pipelines written against m4t. Needs only httpx (and tenacity for retries)."""

from gateway.client._async import AsyncClient
from gateway.client._calls import DEFAULT_URL, AudioInput
from gateway.client._errors import (
    BadGatewayError,
    BadRequestError,
    ConflictError,
    GatewayAPIError,
    GatewayConnectionError,
    GatewayTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RequestError,
    ServiceError,
    ServiceUnavailableError,
    UnsupportedMediaError,
)
from gateway.client._models import CloneResult, Health, Job, SpeakerEmbedding, SpeechResult, Track, Voice
from gateway.client._sync import Client
from gateway.client.compat import VoiceCloner, get_voice_cloner

__all__ = [
    "DEFAULT_URL", "AsyncClient", "AudioInput", "BadGatewayError", "BadRequestError", "Client", "CloneResult",
    "ConflictError", "GatewayAPIError", "GatewayConnectionError", "GatewayTimeoutError", "Health",
    "InvalidRequestError", "Job", "NotFoundError", "PayloadTooLargeError", "RateLimitError", "RequestError",
    "ServiceError", "ServiceUnavailableError", "SpeakerEmbedding", "SpeechResult", "Track", "UnsupportedMediaError",
    "Voice", "VoiceCloner", "get_voice_cloner",
]
