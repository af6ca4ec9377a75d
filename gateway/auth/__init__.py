"""API keys, scopes and per-key limits (issue 12 items 1-2).

For other modules: `request.state.key_id` (None when open or no key), `is_admin(request)`, the route
dependencies `require_admin` and `spends_audio`, and `charge_audio(seconds)` where audio is handed out.
"""

from __future__ import annotations

from fastapi import Depends, Request

from gateway.auth.access import (
    Account,
    Auth,
    AuthConfigError,
    Forbidden,
    RateLimited,
    charge_audio,
    is_admin_state,
)
from gateway.auth.middleware import AuthMiddleware

__all__ = ["Auth", "AuthConfigError", "AuthMiddleware", "charge_audio", "is_admin", "require_admin",
           "spends_audio"]


def is_admin(request: Request) -> bool:
    """True when the request may do admin things: the gateway is open, or its key has the admin scope."""
    return is_admin_state(request.state)


def _require_admin(request: Request) -> None:
    if not is_admin(request):
        raise Forbidden("this needs a key with the admin scope")


async def _audio_quota(request: Request) -> None:
    account = getattr(request.state, "account", None)
    if not isinstance(account, Account):
        return
    decision = await account.limiter.audio_left(account.key.id, account.key.limits)
    if not decision.allowed:
        raise RateLimited(
            f"key {account.key.id!r} has used its {decision.limit} audio seconds for today (UTC)",
            retry_after=decision.retry_after, limit="audio_seconds_per_day",
        )


#: route dependencies: `@router.delete(..., dependencies=[require_admin])`
require_admin = Depends(_require_admin)
#: on routes that render audio: refuse once the key's audio seconds for the day are used up
spends_audio = Depends(_audio_quota)
