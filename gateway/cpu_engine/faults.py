"""Opt-in fault injection: make the CPU engine misbehave the ways real GPU engines do.

Everything is off unless given at start-up (or changed through the debug route `POST /_faults`).
Faults apply only to synthesis requests that passed parameter validation ("admitted" requests), so a
gateway's validation probe (`GET /tts?text_lang=zh&prompt_lang=zh`) never consumes a fault budget.

| fault      | what the client sees                                                               |
|------------|------------------------------------------------------------------------------------|
| `hang`     | nothing, ever: the request holds the engine until the client gives up              |
| `500`      | plain-text "Internal Server Error" 500, then the connection is closed              |
| `silence`  | 200 + the engine's error placeholder: 16 kHz audio of exactly 16000 zero samples  |
| `truncate` | 200 + headers, then the body stops early and the connection drops                 |
| `mute`     | 200 + a well-formed WAV at the output rate, as long as the speech, but all zeros     |
| `short`    | 200 + a well-formed WAV holding only the first fifth of the speech                 |
| `endless`  | 200 + a well-formed WAV with the speech said six times over (a runaway decoder)     |
| `wrong_voice` | 200 + the speech adapted to a pitch far from the reference's (another speaker)   |

The last four are what GPT-SoVITS's random sampling now and then produces: answers that pass every protocol
check and are still wrong. They apply to whole answers (api_v2 mode 0, api.py) and are ignored when
streaming (a stream's quality is not checked).

`delay` adds seconds to every synthesis (GPU time), `segment_delay` to every text segment,
`fault_after` lets N admitted requests through healthy before the fault starts, `fault_count` stops it after
N faulty requests (1: a one-shot fault), and `exit_after` crashes the process (`os._exit`) on admitted request
N+1 without answering it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

log = logging.getLogger("gateway.cpu_engine")

Fault = Literal["hang", "500", "silence", "truncate", "mute", "short", "endless", "wrong_voice"]
FAULTS: tuple[str, ...] = get_args(Fault)
#: Faults that change the audio of a well-formed answer (synth.degrade); the others break the protocol.
AUDIO_FAULTS = frozenset({"mute", "short", "endless", "wrong_voice"})

#: Exit status of an `--exit-after` crash (distinct from 0 so a supervisor sees a failure).
CRASH_EXIT_CODE = 70


class InjectedFault(RuntimeError):
    """Raised on purpose for the `500` fault: the framework answers a plain-text 500 and uvicorn then drops
    the connection, exactly what the real engine does after an unhandled exception."""


@dataclass
class FaultSettings:
    fault: Fault | None = None
    delay: float = 0.0
    segment_delay: float = 0.0
    fault_after: int = 0
    exit_after: int | None = None
    fault_count: int | None = None  # None: every request after `fault_after`


class PacedSynthesizer:
    """Wraps the synthesizer so each text segment costs `segment_delay` more seconds: GPU time that grows
    with the text, which makes streaming's early first chunk observable. Runs in the engine's worker thread."""

    def __init__(self, synthesizer: Any, settings: FaultSettings) -> None:
        self._synthesizer = synthesizer
        self._settings = settings

    def segments(self, params: Any) -> Iterator[Any]:
        for segment in self._synthesizer.segments(params):
            if self._settings.segment_delay:
                time.sleep(self._settings.segment_delay)
            yield segment


class FaultController:
    """Decides, per admitted synthesis request and in arrival order, which fault (if any) it gets."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self.admitted = 0
        # Index of the first admitted request that gets the fault; moves when faults change at run time,
        # so "fault_after N" always means "after N more healthy requests".
        self._armed_from = settings.fault_after

    def admit(self) -> Fault | None:
        """Count one admitted synthesis request; crash here if `exit_after` is used up."""
        index = self.admitted
        self.admitted += 1
        limit = self.settings.exit_after
        if limit is not None and index >= limit:
            log.warning("exit_after=%d reached: exiting now without answering request %d", limit, index + 1)
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)
        fault, count = self.settings.fault, self.settings.fault_count
        if fault is None or index < self._armed_from:
            return None
        return fault if count is None or index < self._armed_from + count else None

    @property
    def delay(self) -> float:
        return self.settings.delay

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial change (`fault`, `delay`, `fault_after`, `fault_count`); absent keys keep their value."""
        if "fault" in changes:
            self.settings.fault = changes["fault"]
        if "delay" in changes and changes["delay"] is not None:
            self.settings.delay = float(changes["delay"])
        if "fault_after" in changes and changes["fault_after"] is not None:
            self.settings.fault_after = int(changes["fault_after"])
        if "fault_count" in changes:
            self.settings.fault_count = changes["fault_count"]
        if "fault" in changes or "fault_after" in changes or "fault_count" in changes:
            self._armed_from = self.admitted + self.settings.fault_after
        log.warning("faults changed: %s", self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        return {
            "fault": self.settings.fault,
            "delay": self.settings.delay,
            "fault_after": self.settings.fault_after,
            "exit_after": self.settings.exit_after,
            "fault_count": self.settings.fault_count,
            "admitted": self.admitted,
        }
