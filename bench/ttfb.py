"""Streaming time to first audio byte: through the gateway vs directly from the engine, in one run.

The CPU engine gets `--segment-delay` per text segment to stand in for GPU time, so a clip takes seconds
and the first chunk can arrive long before the last. Requests alternate (direct, gateway, ...).
Usage: python -m bench.ttfb [-n 15] [--segment-delay 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench._procs import engine, gateway, percentile
from bench.overhead import reference_wav

TEXT = "First sentence of the clip. A second one follows it. Then a third. And a fourth to finish."


def timed_stream(http: httpx.Client, method: str, url: str, **kwargs: object) -> tuple[float, float]:
    """(seconds to the first audio byte after the WAV header, seconds to the last byte)."""
    started = time.perf_counter()
    first = None
    received = 0
    with http.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
        response.raise_for_status()
        for chunk in response.iter_raw():
            received += len(chunk)
            if first is None and received > 44:
                first = time.perf_counter() - started
    assert first is not None
    return first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=15)
    parser.add_argument("--segment-delay", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(tmp)
        ref = reference_wav(shared / "ref.wav")
        with engine("--segment-delay", str(args.segment_delay)) as engine_url, gateway(
            [engine_url], shared
        ) as gateway_url, httpx.Client(timeout=120) as http:
            voice = http.post(f"{gateway_url}/v1/voices", data={"name": "bench", "prompt_language": "en"},
                              files={"audio": ("ref.wav", ref.read_bytes())}).json()
            engine_ref = shared / "refs" / f"{voice['reference_sha256']}.wav"
            direct_body = {"text": TEXT, "text_lang": "en", "ref_audio_path": str(engine_ref.resolve()),
                           "prompt_text": "", "prompt_lang": "en", "media_type": "wav", "streaming_mode": True}
            gateway_body = {"model": "gpt-sovits", "input": TEXT, "voice": "bench", "response_format": "wav",
                            "stream": True, "text_language": "en"}
            runs = []
            for i in range(args.n + 1):
                direct = timed_stream(http, "POST", f"{engine_url}/tts", json=direct_body)
                through = timed_stream(http, "POST", f"{gateway_url}/v1/audio/speech", json=gateway_body)
                if i:  # the first pair warms caches
                    runs.append((direct, through))
    print(f"streaming TTFB: n={args.n}, {len(TEXT)} chars, segment delay {args.segment_delay} s, CPU engine, loopback")
    print(f"{'path':<10}{'TTFB p50':>10}{'TTFB p99':>10}{'total p50':>11}")
    summary = {}
    for name, index in (("direct", 0), ("gateway", 1)):
        ttfb = [r[index][0] * 1000 for r in runs]
        total = [r[index][1] * 1000 for r in runs]
        summary[name] = {"ttfb_p50_ms": percentile(ttfb, 50), "ttfb_p99_ms": percentile(ttfb, 99),
                         "total_p50_ms": percentile(total, 50)}
        print(f"{name:<10}{percentile(ttfb, 50):>10.1f}{percentile(ttfb, 99):>10.1f}{percentile(total, 50):>11.1f}")
    added = [(g[0] - d[0]) * 1000 for d, g in runs]
    summary["added_ttfb_ms"] = {"p50": percentile(added, 50), "p99": percentile(added, 99),
                                "mean": statistics.mean(added)}
    print(f"added TTFB (gateway - direct, per pair): p50 {percentile(added, 50):.1f} ms, "
          f"p99 {percentile(added, 99):.1f} ms")
    print(f"first byte / whole clip through the gateway: "
          f"{summary['gateway']['ttfb_p50_ms'] / summary['gateway']['total_p50_ms']:.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ttfb.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
