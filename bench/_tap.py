"""A TCP relay in front of an engine that notes when each `POST /tts` answer first carries audio.

Timing the gateway against a separate direct call cannot resolve a millisecond: the CPU engine's own time to
its first chunk moves by ±100 ms between calls on a shared 2-core machine. With the relay between gateway and
engine, one request yields both moments on one clock (time.perf_counter in this process): the engine's first
audio reaching the gateway's side, and the gateway's first byte reaching the client. The relay's own
forwarding (~0.1 ms) is counted as gateway time, so the added figure is an upper bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench._procs import free_port

# HTTP/1.1 chunked framing of the engine's 44-byte WAV header is "2c\r\n" + 44 bytes + "\r\n" (50 bytes);
# a body past that (and the next chunk-size line) carries PCM.
_AUDIO_AFTER_BODY_BYTES = 60
State = dict[str, object]  # per connection: tracking a POST /tts answer, its head so far, noted


class Tap:
    def __init__(self, engine_port: int) -> None:
        self.port = free_port()
        self._engine_port = engine_port
        self.first_audio: list[float] = []  # per POST /tts, in order
        self.asked: list[float] = []

    async def _pipe_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: State) -> None:
        while data := await reader.read(65536):
            if data.startswith(b"POST /tts"):
                state.update(tracking=True, head=b"", body=0, noted=False)
                self.asked.append(time.perf_counter())
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _pipe_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: State) -> None:
        while data := await reader.read(65536):
            if state.get("tracking") and not state.get("noted"):
                head = bytes(state["head"]) + data  # type: ignore[arg-type]
                end = head.find(b"\r\n\r\n")
                if end >= 0 and len(head) - end - 4 > _AUDIO_AFTER_BODY_BYTES:
                    self.first_audio.append(time.perf_counter())
                    state["noted"] = True
                state["head"] = head
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        engine_reader, engine_writer = await asyncio.open_connection("127.0.0.1", self._engine_port)
        state: State = {}
        await asyncio.gather(self._pipe_up(client_reader, engine_writer, state),
                             self._pipe_down(engine_reader, client_writer, state), return_exceptions=True)

    def run(self, started: threading.Event) -> None:
        async def main() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            started.set()
            async with server:
                await server.serve_forever()

        asyncio.run(main())


@contextmanager
def tap(engine_url: str) -> Iterator[Tap]:
    relay = Tap(int(engine_url.rsplit(":", 1)[1]))
    started = threading.Event()
    threading.Thread(target=relay.run, args=(started,), daemon=True).start()
    started.wait(10)
    yield relay
