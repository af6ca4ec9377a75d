"""`sovits-gateway check`: a doctor for operators, run before traffic arrives or from a script.

It checks what the gateway's own health routes cannot prove: that the settings parse, that the shared
directory takes a durable write, and that every engine can open a reference the gateway wrote, by the path
the engine sees (the classic broken deployment: the gateway writes /srv/shared/refs/x.wav, the engine looks
for /shared/refs/x.wav on a volume that is not mounted, or not readable by its user). One line per check,
or `--json`; exit 0 when every check passes, 1 otherwise (for scripts and container healthchecks).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import redis.asyncio as aioredis
from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis.exceptions import RedisError

from gateway.audio.intake import PreparedReference, store_reference
from gateway.audio.wav import pcm16_wav
from gateway.engine.client import VoiceCloner
from gateway.engine.types import SynthesisRequest
from gateway.errors import GatewayError
from gateway.settings import Settings

Status = Literal["pass", "fail", "skip"]
_MARKS = {"pass": "✓", "fail": "✗", "skip": "-"}
_FLAVOURS = {"v2": "api_v2", "v1": "api.py"}
#: 3.5 s: inside api_v2's 3-10 s reference rule with a margin on both sides.
PROBE_SECONDS = 3.5
PROBE_RATE = 32000


@dataclass
class Check:
    """One line of the report. `engine` carries the facts learned about an engine (id, url, flavour, version)."""

    name: str
    status: Status
    detail: str
    seconds: float | None = None
    engine: dict[str, Any] | None = None


def probe_wav(seconds: float = PROBE_SECONDS, rate: int = PROBE_RATE) -> bytes:
    """A voiced, speech-like mono PCM16 WAV (harmonics of a 120 Hz voice, four syllables a second), so an
    engine loads and checks it like a real reference. Deterministic: the same file name every run."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(120.0 * (1.0 + 0.02 * np.sin(2 * np.pi * 5.0 * t))) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 25))
    syllables = np.clip(np.sin(np.pi * 4.0 * t), 0.0, None) ** 0.6
    signal = voice * syllables
    return pcm16_wav((0.5 * signal / np.max(np.abs(signal))).astype(np.float32), rate)


# ---------------------------------------------------------------------------------------------- local checks


def load_settings(make: Callable[[], Settings]) -> tuple[Settings | None, Check]:
    try:
        settings = make()
    except ValidationError as exc:
        problems = "; ".join(_readable(error) for error in exc.errors())
        return None, Check("settings", "fail", f"invalid settings: {problems}")
    except (SettingsError, ValueError) as exc:
        return None, Check("settings", "fail", f"invalid settings: {exc}")
    side = f" (engines see it as {settings.engine_shared_dir})" if settings.engine_shared_dir else ""
    count = len(settings.engines)
    detail = f"{count} engine{'s' * (count != 1)}, shared dir {settings.shared_dir.absolute()}{side}"
    return settings, Check("settings", "pass" if settings.engines else "fail",
                           detail if settings.engines else "no engines configured (GATEWAY_ENGINES)")


def _readable(error: Any) -> str:
    """`GATEWAY_PORT: Input should be a valid integer ... (got 'abc')`: the variable an operator sets."""
    where = f"GATEWAY_{str(error['loc'][0]).upper()}" if error["loc"] else "settings"
    got = error.get("input")
    shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
    return f"{where}: {error['msg']}{shown}"


def check_shared_dir(settings: Settings) -> Check:
    """Create, write, fsync and delete a probe file: what every reference write needs (and a full disk,
    a read-only or missing mount fails here)."""
    directory = settings.shared_dir.absolute()
    started = time.monotonic()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".doctor-probe-")
        try:
            os.write(fd, b"sovits-gateway check\n" * 64)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return Check("shared dir", "fail", f"{directory} is not writable: {exc}")
    seconds = time.monotonic() - started
    return Check("shared dir", "pass", f"{directory} is writable (write + fsync + delete in {_ms(seconds)})", seconds)


def write_probe_reference(settings: Settings) -> tuple[Path | None, Check]:
    """Store the probe exactly as the gateway stores a reference (same code, name and mode). It is
    content-addressed, so it is the same small file every run and is left in place: deleting it could
    pull it from under a second `check` running at the same time."""
    wav = probe_wav()
    ref = PreparedReference(wav=wav, sha256=hashlib.sha256(wav).hexdigest(), sample_rate=PROBE_RATE,
                            duration=PROBE_SECONDS, trimmed_seconds=0.0, warnings=())
    try:
        path = store_reference(ref, settings.refs_dir)
    except OSError as exc:
        return None, Check("probe reference", "fail", f"cannot write a reference into {settings.refs_dir}: {exc}")
    return path, Check("probe reference", "pass", f"{path} ({PROBE_SECONDS:g} s speech-like WAV)")


# ---------------------------------------------------------------------------------------------- engine checks


async def check_engine(index: int, url: str, settings: Settings, probe: Path | None, timeout: float) -> list[Check]:
    """Reachable + flavour + model version, then: can it open the probe by its engine-side path?"""
    engine_id = f"e{index}"
    facts: dict[str, Any] = {"id": engine_id, "url": url, "flavor": None, "version": None}
    # every call of this check, /openapi.json included, gets the whole timeout: a busy api_v2 engine does not
    # answer while it synthesizes, and the doctor should report it slow rather than down
    client = VoiceCloner(url, settings.model_copy(update={"connect_timeout": timeout}), engine_id)
    try:
        started = time.monotonic()
        try:
            flavor = await client.detect_flavor()
            version = await client.probe_version()
        except GatewayError as exc:
            # operators read this: the URL too (client-facing messages name only the id)
            reason = Check(f"{engine_id} engine", "fail", f"{url} not usable: {exc.message}", engine=facts)
            skipped = Check(f"{engine_id} reads refs", "skip", "not tried: the engine is not usable", engine=facts)
            return [reason, skipped]
        seconds = time.monotonic() - started
        facts.update(flavor=flavor, version=version)
        shown = version or ("not reported by api.py" if flavor == "v1" else "unknown")
        reachable = Check(f"{engine_id} engine", "pass",
                          f"{url}: {_FLAVOURS[flavor]}, model {shown} (answered in {_ms(seconds)})", seconds, facts)
        return [reachable, await _check_reads(client, engine_id, facts, settings, probe, timeout)]
    finally:
        await client.aclose()


async def _check_reads(
    client: VoiceCloner, engine_id: str, facts: dict[str, Any], settings: Settings, probe: Path | None, timeout: float
) -> Check:
    name = f"{engine_id} reads refs"
    if probe is None:
        return Check(name, "skip", "not tried: no probe reference could be written", engine=facts)
    engine_path = settings.to_engine_path(probe)
    started = time.monotonic()
    try:
        if facts["flavor"] == "v2":
            await client.load_reference(engine_path, timeout=timeout)
            how = "/set_refer_audio"
        else:  # api.py has no such route: one short synthesis from the probe
            result = await client.synthesize(
                SynthesisRequest(text="Hello.", text_language="en", reference_path=engine_path,
                                 prompt_text="Hello.", prompt_language="en"),
                timeout=timeout,
            )
            facts["version"] = result.engine.version or facts["version"]
            how = f"a short synthesis ({result.sample_rate} Hz)"
    except GatewayError as exc:
        said = str(exc.extra.get("engine_message") or exc.message)
        if facts["flavor"] == "v1":
            said += " (api.py reports an unreadable reference only by failing the synthesis)"
        hint = (f"the gateway wrote it as {probe}: GATEWAY_ENGINE_SHARED_DIR must be where this engine sees "
                "GATEWAY_SHARED_DIR, and the file must be readable by the engine's user")
        return Check(name, "fail", f"the engine cannot open {engine_path}: {said}; {hint}", engine=facts)
    seconds = time.monotonic() - started
    return Check(name, "pass", f"loaded {engine_path} via {how} in {_ms(seconds)}", seconds, facts)


async def check_redis(settings: Settings, timeout: float) -> Check:
    """With GATEWAY_REDIS_URL: Redis answers, runs scripts (the slot script needs EVAL), and its version."""
    started = time.perf_counter()
    client = aioredis.Redis.from_url(str(settings.redis_url), socket_timeout=timeout, socket_connect_timeout=timeout,
                                     decode_responses=True)
    try:
        await client.ping()
        version = (await client.info("server")).get("redis_version", "?")
        await client.eval("return redis.call('TIME')", 0)
    except RedisError as exc:
        return Check("redis", "fail", f"{_without_password(str(settings.redis_url))} does not answer: {exc}")
    finally:
        await client.aclose()
    seconds = time.perf_counter() - started
    return Check("redis", "pass", f"{_without_password(str(settings.redis_url))}: Redis {version}, scripts run, "
                 f"prefix {settings.redis_prefix!r} ({_ms(seconds)})", seconds)


def _without_password(url: str) -> str:
    """redis://user:secret@host → redis://user:***@host: the report may land in a ticket."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


# ---------------------------------------------------------------------------------------------- running


async def run_checks(make_settings: Callable[[], Settings], timeout: float) -> list[Check]:
    settings, parsed = load_settings(make_settings)
    if settings is None:
        return [parsed]
    shared = check_shared_dir(settings)
    probe, written = write_probe_reference(settings) if shared.status == "pass" else (
        None, Check("probe reference", "skip", "not tried: the shared dir is not writable"))
    per_engine = await asyncio.gather(
        *(check_engine(i, url, settings, probe, timeout) for i, url in enumerate(settings.engines))
    )
    coordination = [await check_redis(settings, timeout)] if settings.redis_url else []
    return [parsed, shared, written, *coordination, *(check for checks in per_engine for check in checks)]


def render(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = [f"{_MARKS[check.status]} {check.name:<{width}}  {check.detail}" for check in checks]
    failed = sum(check.status == "fail" for check in checks)
    skipped = sum(check.status == "skip" for check in checks)
    if failed:
        lines.append(f"{failed} of {len(checks)} checks failed" + (f", {skipped} skipped" if skipped else ""))
    else:
        lines.append(f"all {len(checks)} checks passed")
    return "\n".join(lines)


def report(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(check.status == "pass" for check in checks), "checks": [asdict(check) for check in checks]}


def run(make_settings: Callable[[], Settings], *, as_json: bool, timeout: float) -> int:
    checks = asyncio.run(run_checks(make_settings, timeout))
    print(json.dumps(report(checks), indent=2, ensure_ascii=False) if as_json else render(checks), flush=True)
    return 0 if report(checks)["ok"] else 1


def add_check_flags(parser: argparse.ArgumentParser, settings_from: Callable[[argparse.Namespace], Settings]) -> None:
    """`check` takes the gateway's own flags (added by the caller) plus these."""
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds each engine call may take (default 20; a busy api_v2 engine answers late)")
    parser.set_defaults(run=lambda args: run(lambda: settings_from(args), as_json=args.json, timeout=args.timeout))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"
