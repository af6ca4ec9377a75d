"""Logging: text for a terminal or one JSON object per line for a log pipeline (GATEWAY_LOG_FORMAT), the
per-request facts behind the access line, and the request id that travels with a request to the engine.

The access line is written by the request-context middleware (gateway/api/context.py) once the response is
over; what only the routes know (voice, engine, attempts, times, audio length) they note on the request's
`RequestFacts` on the way.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

if TYPE_CHECKING:  # services import the engine client, which imports this module
    from gateway.services.render import Rendered

#: The current request's id: set by the middleware, read by the engine client (its `X-Request-ID`). A
#: contextvar so it reaches the pool's detached call tasks (they copy the context) without new parameters.
request_id_var: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)

#: The access log: one record per request, its fields under `access` (JsonFormatter spreads them).
access_log = logging.getLogger("gateway.access")


@dataclass
class RequestFacts:
    """What a route learned about its request, for the access line (None: not applicable or not reached)."""

    voice_id: str | None = None
    engine: str | None = None  # the engine's id (`e0`), as clients see it
    attempts: int | None = None
    queue_seconds: float | None = None
    engine_seconds: float | None = None
    encode_seconds: float | None = None
    audio_seconds: float | None = None
    cache: str | None = None  # X-Cache: hit, miss, bypass

    def note_rendered(self, rendered: Rendered, encode_seconds: float) -> None:
        """A whole clip: where and how it was made (no engine on a result-cache hit)."""
        self.engine = rendered.engine.id if rendered.engine is not None else None
        self.attempts, self.queue_seconds = rendered.attempts, rendered.queue_wait
        self.engine_seconds, self.audio_seconds = rendered.engine_seconds, rendered.duration
        self.encode_seconds, self.cache = encode_seconds, rendered.cache_status


def request_facts(request: Request) -> RequestFacts:
    """The request's facts (made by the middleware; a throwaway one outside it, e.g. in unit tests)."""
    facts = getattr(request.state, "facts", None)
    if not isinstance(facts, RequestFacts):
        facts = RequestFacts()
        request.state.facts = facts
    return facts


def access_fields(
    *, request_id: str, key_id: str | None, method: str, route: str, status: int, seconds: float, facts: RequestFacts
) -> dict[str, Any]:
    """The access line's fields; times in seconds rounded to 0.1 ms."""
    fields: dict[str, Any] = {
        "request_id": request_id, "key_id": key_id, "method": method, "route": route, "status": status,
        "duration": round(seconds, 4),
    }
    for name, value in asdict(facts).items():
        fields[name] = round(value, 4) if isinstance(value, float) else value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and an access record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """Root logging for `serve`: text as before, or JSON lines on stderr (uvicorn's loggers propagate to it)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        # uvicorn's own access line stays in text mode (as before); ours would say it twice
        access_log.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine probe is noise
