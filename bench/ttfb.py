"""Streaming time to first audio byte per format: what the gateway adds to the engine's own first byte.

The CPU engine gets `--segment-delay` per text segment to stand in for GPU time, so a clip takes seconds
and the first chunk can arrive long before the last. A relay in front of the engine (bench/_tap.py) notes
when the engine's first audio reaches the gateway's side; the client notes the gateway's first byte; the
difference, per request on one clock, is the gateway's added TTFB (the engine's own ±100 ms jitter between
calls would drown a millisecond if two separate calls were compared). For mp3, opus, aac and flac it includes
encoding the first chunk and the encoder's lookahead; their first bytes carry audio (mp3 and ADTS have no
header; Ogg and FLAC headers leave with the first audio packet). For wav the 44-byte header is skipped.
Usage: python -m bench.ttfb [-n 20] [--segment-delay 0.2] [--formats pcm,wav,mp3,opus,aac,flac]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._procs import engine, gateway, percentile
from bench._tap import tap
from bench.overhead import reference_wav

TEXT = "First sentence of the clip. A second one follows it. Then a third. And a fourth to finish."
FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "flac")


def timed_stream(http: httpx.Client, url: str, body: dict[str, object], skip: int) -> tuple[float, float, float]:
    """(start, moment of the first body byte after `skip` header bytes, moment of the last byte): perf_counter."""
    started = time.perf_counter()
    first = None
    received = 0
    with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            received += len(chunk)
            if first is None and received > skip:
                first = time.perf_counter()
    assert first is not None
    return started, first, time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--segment-delay", type=float, default=0.2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--instant", action="store_true",
                        help="the engine answers its canned clip (one segment): no engine CPU competes")
    args = parser.parse_args()
    # The relay (a thread) and the client share this process's GIL: with the default 5 ms switch interval the
    # client noting the gateway's first byte could wait for the relay forwarding the rest of a chunk.
    sys.setswitchinterval(0.0002)
    formats = [f for f in args.formats.split(",") if f]
    # the relay runs in a thread of this process: hand the GIL over within 0.1 ms, not Python's default 5 ms,
    # or the client's read would wait for the relay's forwarding and look like gateway time
    sys.setswitchinterval(1e-4)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(tmp)
        ref = reference_wav(shared / "ref.wav")
        engine_args = ["--segment-delay", str(args.segment_delay), *(["--instant"] if args.instant else [])]
        with engine(*engine_args) as engine_url, tap(engine_url) as relay, gateway(
            [f"http://127.0.0.1:{relay.port}"], shared
        ) as gateway_url, httpx.Client(timeout=120) as http:
            http.post(f"{gateway_url}/v1/voices", data={"name": "bench", "prompt_language": "en"},
                      files={"audio": ("ref.wav", ref.read_bytes())}).raise_for_status()
            for fmt in formats:
                body = {"model": "gpt-sovits", "input": TEXT, "voice": "bench", "response_format": fmt,
                        "text_language": "en", "stream": True}  # the default; explicit for older gateways
                runs = []
                for i in range(args.n + 1):
                    started, first, last = timed_stream(http, f"{gateway_url}/v1/audio/speech", body,
                                                        44 if fmt == "wav" else 0)
                    engine_first = relay.first_audio[-1]
                    assert started < engine_first < first, "the relay did not see this request's audio"
                    if i:  # the first request warms caches
                        share = (first - started) / (last - started)
                        runs.append((engine_first - relay.asked[-1], first - engine_first, share))
                rows[fmt] = runs
                print(f"{fmt}: {len(runs)} requests done", file=sys.stderr, flush=True)
    print(f"streaming TTFB: n={args.n} per format, {len(TEXT)} chars, segment delay {args.segment_delay} s, "
          f"{'instant engine (one canned segment), ' if args.instant else ''}"
          "CPU engine, loopback")
    print(f"{'format':<8}{'engine TTFB p50':>16}{'added p50 ms':>14}{'added p99 ms':>14}{'first byte/total':>18}")
    summary = {}
    for fmt, runs in rows.items():
        engine_ttfb = percentile([r[0] * 1000 for r in runs], 50)
        added = [r[1] * 1000 for r in runs]
        share = percentile([r[2] for r in runs], 50)
        summary[fmt] = {"engine_ttfb_p50_ms": engine_ttfb, "added_p50_ms": percentile(added, 50),
                        "added_p99_ms": percentile(added, 99), "first_byte_share_of_total_p50": share}
        print(f"{fmt:<8}{engine_ttfb:>16.1f}{percentile(added, 50):>14.2f}{percentile(added, 99):>14.2f}"
              f"{share:>18.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ttfb.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
