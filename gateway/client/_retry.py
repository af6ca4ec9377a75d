"""When to send a request again: 429 and 503 (refused before any work was done) and connections that were never
made, a bounded number of times, waiting what `Retry-After` says (capped) or a short exponential backoff."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt

from gateway.client._errors import GatewayAPIError


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayAPIError) and exc.retryable


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    #: the longest wait between attempts, whatever Retry-After says
    max_wait: float = 30.0

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, GatewayAPIError) else None
        backoff = 0.5 * 2 ** (state.attempt_number - 1)
        return max(0.0, min(self.max_wait, retry_after if retry_after is not None else backoff))

    @staticmethod
    def _count(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, GatewayAPIError):
            exc.attempts = state.attempt_number

    def options(self) -> dict[str, Any]:
        """Keyword arguments for tenacity's `Retrying` / `AsyncRetrying` (a fresh one per request)."""
        return {
            "retry": retry_if_exception(_retryable),
            "stop": stop_after_attempt(self.max_retries + 1),
            "wait": self.wait,
            "after": self._count,
            "reraise": True,
        }
