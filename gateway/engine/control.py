"""An engine's control calls, apart from synthesis: weight switches (the pool, inside a request's slot) and
loading a reference without synthesizing (`sovits-gateway check`). A mixin of VoiceCloner (client.py): the same
client, connection pool and error classification, kept in its own file."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Protocol

import anyio
import httpx

from gateway.engine import protocol_v1, protocol_v2
from gateway.engine.types import EngineInfo
from gateway.errors import EngineBadResponse, EngineError, EngineRejected, EngineTimeout
from gateway.settings import ModelWeights, Settings

log = logging.getLogger("gateway.engine")


class _Engine(Protocol):
    """What the control calls use of VoiceCloner."""

    id: str
    url: str
    info: EngineInfo
    _settings: Settings
    _http: httpx.AsyncClient

    async def _ensure_flavor(self) -> str: ...
    def _timeouts(self, seconds: float) -> httpx.Timeout: ...
    async def _send(self, request: httpx.Request) -> httpx.Response: ...
    def _transport_error(self, exc: httpx.HTTPError, *, responded: bool) -> EngineError: ...
    async def probe_version(self) -> str | None: ...
    async def _control(self, path: str, params: dict[str, str], what: str, timeout: float) -> None: ...


class EngineControl:
    """VoiceCloner's control calls (typed against `_Engine`, the parts of it they use)."""

    # ------------------------------------------------------------------ weights

    async def load_weights(self: _Engine, weights: ModelWeights, *, timeout: float | None = None) -> None:
        """Switch the engine's global model (v2: GPT then SoVITS; v1: both at once via /set_model)."""
        limit = self._settings.read_timeout if timeout is None else timeout
        try:
            with anyio.fail_after(max(limit, 0)):
                if await self._ensure_flavor() == "v1":
                    params = protocol_v1.set_model_params(weights, self.id)
                    await self._control(protocol_v1.SET_MODEL_PATH, params, "model", limit)
                else:
                    if weights.gpt:
                        await self._control(protocol_v2.SET_GPT_PATH, {"weights_path": weights.gpt}, "GPT", limit)
                    if weights.sovits:
                        params = {"weights_path": weights.sovits}
                        await self._control(protocol_v2.SET_SOVITS_PATH, params, "SoVITS", limit)
                self.info = replace(self.info, version=None)  # the version follows the SoVITS file
                if self.info.flavor == "v2":
                    await self.probe_version()
        except TimeoutError:
            raise EngineTimeout(
                f"engine {self.id} did not load weights within {limit:.1f}s", engine=self.id
            ) from None

    async def _control(self: _Engine, path: str, params: dict[str, str], what: str, timeout: float) -> None:
        request = self._http.build_request("GET", path, params=params, timeout=self._timeouts(timeout))
        response = await self._send(request)
        try:
            body = await response.aread() if response.status_code < 500 else b""
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, responded=True) from exc
        finally:
            await response.aclose()
        if response.status_code == 200:
            return
        message = _control_message(body) or f"HTTP {response.status_code}"
        # weight paths (admin-configured) and the engine's words about them are for the operator's log only
        log.warning("engine %s (%s) could not load %s weights %s: %s", self.id, self.url, what, params, message)
        status = response.status_code
        text = f"engine {self.id} could not load the model's {what} weights (HTTP {status}; see the gateway log)"
        if 400 <= response.status_code < 500:
            raise EngineRejected(text, engine=self.id, code="weights_rejected")
        raise EngineBadResponse(text, engine=self.id)

    # ------------------------------------------------------------------ references

    async def load_reference(self: _Engine, engine_path: str, *, timeout: float) -> None:
        """api_v2 only: have the engine open and check a reference without synthesizing (`/set_refer_audio`).

        `sovits-gateway check` uses it to prove the engine reads what the gateway writes. It replaces the
        engine's one cached reference, so the next synthesis reloads its own (one extra load, no harm)."""
        request = self._http.build_request(
            "GET", protocol_v2.SET_REFER_AUDIO_PATH, params={"refer_audio_path": engine_path},
            timeout=self._timeouts(timeout),
        )
        try:
            with anyio.fail_after(timeout):
                response = await self._send(request)
                try:
                    body = await response.aread()
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, responded=True) from exc
                finally:
                    await response.aclose()
        except TimeoutError:
            message = f"engine {self.url} did not load a reference within {timeout:.1f}s"
            raise EngineTimeout(message, engine=self.url) from None
        if response.status_code == 200:
            return
        message = _control_message(body) or f"HTTP {response.status_code}"
        text = f"engine {self.url} could not load the reference {engine_path}: {message}"
        if 400 <= response.status_code < 500:
            raise EngineRejected(text, engine=self.url, code="reference_rejected", engine_message=message)
        raise EngineBadResponse(text, engine=self.url)


def _control_message(body: bytes) -> str:
    """`{"message": ..., "Exception": ...}` (api_v2) or `{"code": 400, "message": ...}` (api.py) → text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500]
    if not isinstance(parsed, dict):
        return str(parsed)[:500]
    parts = [str(parsed[key]) for key in ("message", "Exception") if parsed.get(key)]
    return ": ".join(parts)
