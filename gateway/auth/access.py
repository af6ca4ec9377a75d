"""Who may use the gateway: the keys in force, the limiter, open mode, and the request's account."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from gateway.auth.keyring import KeyRing
from gateway.auth.keys import ApiKey, Limits
from gateway.auth.limits import Limiter, MemoryLimiter
from gateway.errors import GatewayError
from gateway.settings import Settings

log = logging.getLogger("gateway.auth")


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class RateLimited(GatewayError):
    status, code = 429, "rate_limited"


class AuthConfigError(Exception):
    """The gateway must not start as configured (one line for the operator)."""


@dataclass(frozen=True)
class Account:
    """The key a request (and whatever it starts) runs under, and where its usage is counted."""

    key: ApiKey
    limiter: Limiter

    async def charge_audio(self, seconds: float) -> None:
        if seconds > 0:
            await self.limiter.add_audio(self.key.id, seconds)


#: Set by the middleware for the request's task; tasks it starts (a stream's producer, a job's runner) copy it,
#: so the places that count gateway_audio_seconds charge the right key without a request object at hand.
current_account: ContextVar[Account | None] = ContextVar("gateway_account", default=None)


async def charge_audio(seconds: float) -> None:
    """Count `seconds` of audio handed out against the current request's key (nothing when open)."""
    account = current_account.get()
    if account is not None:
        await account.charge_audio(seconds)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or "" (every interface): not provably loopback


def open_mode_problem(settings: Settings, keys_configured: bool) -> str | None:
    if keys_configured or settings.allow_open or is_loopback(settings.host):
        return None
    return (
        f"refusing to start: no API keys are configured and GATEWAY_HOST={settings.host or '(all)'} is not a "
        "loopback address; add keys (GATEWAY_API_KEYS_FILE with `sovits-gateway keys add NAME`, or "
        "GATEWAY_API_KEYS) or set GATEWAY_ALLOW_OPEN=true"
    )


class Auth:
    """The per-app access state (no module globals: several apps can run in one process)."""

    def __init__(self, settings: Settings, limiter: Limiter | None = None) -> None:
        defaults = Limits(settings.key_rpm, settings.key_concurrency, settings.key_audio_seconds_per_day)
        try:
            self.keys = KeyRing(settings.api_keys_file, settings.api_keys.get_secret_value(), defaults)
        except ValueError as exc:  # KeyFileError
            raise AuthConfigError(str(exc)) from exc
        problem = open_mode_problem(settings, self.keys.configured)
        if problem:
            raise AuthConfigError(problem)
        self.limiter: Limiter = limiter or MemoryLimiter()
        self.metrics_open = not settings.metrics_require_key
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def open(self) -> bool:
        return not self.keys.configured

    def start(self) -> None:
        """At lifespan start: say loudly when open, and reload the keys file on SIGHUP (main thread only)."""
        if self.open:
            log.warning(
                "NO API KEYS CONFIGURED: anyone who can reach this gateway may synthesize, delete voices and "
                "jobs. Set GATEWAY_API_KEYS_FILE (sovits-gateway keys add NAME) or GATEWAY_API_KEYS."
            )
            return
        log.info("API keys in force: %d (file %s)", len(self.keys.keys), self.keys.path)
        try:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
            self._loop = loop
        except (RuntimeError, ValueError, NotImplementedError, AttributeError):
            pass  # not the main thread (tests) or no SIGHUP (Windows): the mtime check still reloads

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            self._loop = None

    def _sighup(self) -> None:
        log.info("SIGHUP: reloading the keys file")
        self.keys.reload()


def is_admin_state(state: Any) -> bool:
    """Admin rights for a request's state: any request when open, else a key with the admin scope."""
    if getattr(state, "auth_open", False):
        return True
    account = getattr(state, "account", None)
    return isinstance(account, Account) and account.key.admin
