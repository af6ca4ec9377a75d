"""Slow and idle clients, at the connection: what uvicorn leaves open.

uvicorn closes a keep-alive connection idle between requests, but not one idle from its first byte, one that
sends its headers a byte at a time or trickles its body (slowloris), and it never stops accepting: 19,980 idle
connections took the gateway to its file-descriptor limit. This subclass of uvicorn's httptools protocol adds
what Apache's mod_reqtimeout and Kestrel's MinRequestBodyDataRate do: a deadline for the request headers (and
a size cap on them: httptools has none), a body idle timeout plus a minimum average body rate after that grace
period, and a cap on open connections (the one over it gets a 503 and is closed at once, so its file
descriptor is back straight away).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.settings import Settings

log = logging.getLogger("gateway.server")

_BUSY = json.dumps(
    {"error": {"code": "too_many_connections", "message": "the gateway has too many open connections; retry shortly",
               "request_id": None, "retry_after": 1}}
).encode()
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\n"
    b"content-length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)
_HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
)

#: A refused connection stays open this long (reading and dropping the request) so the 503 is read, not reset.
_LINGER_SECONDS = 1.0
_MAX_LINGERING = 100


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection; the limits are class attributes, set per process by `guarded_protocol`."""

    max_header_bytes: ClassVar[int] = 64 * 1024
    header_timeout: ClassVar[float] = 20.0
    body_timeout: ClassVar[float] = 20.0
    min_body_rate: ClassVar[float] = 500.0
    max_connections: ClassVar[int] = 1000
    _lingering: ClassVar[int] = 0  # refused connections still open (all instances, one event loop)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._header_bytes: int | None = 0  # None once the headers are in
        self._refused = self._lingers = False
        self._body_started = 0.0
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("refusing a connection: %d open (GATEWAY_MAX_CONNECTIONS)", len(self.connections) - 1)
            self._refuse(_BUSY_RESPONSE)
            return
        self._arm(self.header_timeout)  # a connection that never sends a byte is closed too

    def _refuse(self, response: bytes) -> None:
        """Answer and close. Closing with the client's request unread would send a reset that can destroy the
        answer before the client reads it, so a refused connection lingers a moment reading into the void
        (outside the connection count), unless so many linger that the descriptors matter more."""
        self._disarm()
        self.connections.discard(self)
        self._header_bytes = None
        self._refused = True
        self.transport.write(response)
        cls = GuardedHttpProtocol
        if cls._lingering >= _MAX_LINGERING or not self.transport.can_write_eof():
            self.transport.close()
            return
        cls._lingering += 1
        self._lingers = True
        self.transport.write_eof()
        self._timer = self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        # httptools buffers a header line that never ends, with no limit: cap what is read before they complete
        too_long = self._header_bytes is not None and self._header_bytes > self.max_header_bytes
        if too_long and not self.transport.is_closing():
            log.warning("refusing a request whose headers pass %d bytes", self.max_header_bytes)
            self._refuse(_HEADERS_TOO_LARGE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._lingers:
            GuardedHttpProtocol._lingering -= 1
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_bytes is None:  # the next request on a keep-alive connection: the same limits
            self._header_bytes = 0
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        self._disarm()
        super().on_headers_complete()
        self._body_started, self._body_bytes = self.loop.time(), 0
        self._arm(self.body_timeout)  # disarmed at once by on_message_complete when there is no body

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_bytes += len(body)
        elapsed = self.loop.time() - self._body_started
        if elapsed > self.body_timeout and self._body_bytes < self.min_body_rate * elapsed:
            log.warning("closing a connection whose body arrives at %.0f bytes/s (GATEWAY_MIN_BODY_RATE)",
                        self._body_bytes / elapsed)
            self.transport.close()
            return
        self._arm(self.body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.flow is not None and self.flow.read_paused:  # the app is not reading: the wait is ours, not theirs
            self._arm(self.body_timeout)
            return
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, with this process's limits."""
    limits = {
        "header_timeout": settings.header_timeout,
        "body_timeout": settings.body_timeout,
        "min_body_rate": settings.min_body_rate,
        "max_connections": settings.max_connections,
    }
    return type("GatewayHttpProtocol", (GuardedHttpProtocol,), limits)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options for slow and idle clients (cli.py `serve`; tests that run uvicorn themselves)."""
    return {
        "http": guarded_protocol(settings),
        "timeout_keep_alive": settings.keep_alive_timeout,
    }
