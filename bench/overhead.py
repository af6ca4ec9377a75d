"""Gateway overhead: the same reference and text, N requests through the gateway vs directly to the engine.

Requests alternate (direct, gateway, direct, ...) in one run so both see the same machine state; the
difference is taken per pair. Not a test: it prints figures (and writes bench/results/overhead.json).
Usage: python -m bench.overhead [-n 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from bench._procs import engine, gateway, percentile

TEXT = "The gateway adds almost nothing to this call."


def reference_wav(path: Path, seconds: float = 5.0, rate: int = 32000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 3 * t)) * 0.3
    sf.write(path, (voiced * envelope).astype(np.float32), rate, subtype="PCM_16")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(tmp)
        ref = reference_wav(shared / "bench-ref.wav")
        ref_bytes = ref.read_bytes()
        with engine() as engine_url, gateway([engine_url], shared) as gateway_url, httpx.Client(timeout=120) as http:
            direct_body = {"text": TEXT, "text_lang": "en", "ref_audio_path": str(ref.resolve()),
                           "prompt_text": "", "prompt_lang": "en", "media_type": "wav"}

            def direct() -> float:
                started = time.perf_counter()
                http.post(f"{engine_url}/tts", json=direct_body).raise_for_status()
                return time.perf_counter() - started

            own_ms: list[float] = []

            def through_gateway() -> float:
                started = time.perf_counter()
                response = http.post(f"{gateway_url}/v1/voice-clone",
                                     data={"text": TEXT, "text_language": "en", "prompt_language": "en"},
                                     files={"audio": ("ref.wav", ref_bytes, "audio/wav")})
                response.raise_for_status()
                elapsed = time.perf_counter() - started
                # the gateway's own share: everything but the engine call it timed itself
                own_ms.append((elapsed - response.json()["timings"]["engine"]) * 1000)
                return elapsed

            for _ in range(3):  # warm-up: caches, keep-alive connections, the stored reference
                direct(), through_gateway()
            own_ms.clear()
            pairs = [(direct(), through_gateway()) for _ in range(args.n)]
    direct_ms = [d * 1000 for d, _ in pairs]
    gateway_ms = [g * 1000 for _, g in pairs]
    diff_ms = [(g - d) * 1000 for d, g in pairs]
    rows = {"direct": direct_ms, "gateway": gateway_ms, "difference": diff_ms, "gateway-own": own_ms}
    print(f"overhead benchmark: n={args.n}, 5 s reference, text={len(TEXT)} chars, loopback, CPU engine")
    print(f"{'path':<12}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    summary = {}
    for name, values in rows.items():
        summary[name] = {"p50": percentile(values, 50), "p99": percentile(values, 99), "mean": statistics.mean(values)}
        print(f"{name:<12}{summary[name]['p50']:>10.1f}{summary[name]['p99']:>10.1f}{summary[name]['mean']:>10.1f}")
    ratio = summary["gateway"]["p50"] / summary["direct"]["p50"]
    print(f"gateway/direct p50 ratio: {ratio:.3f}")
    print("difference = per-pair (gateway - direct), noisy because the engine's own time varies;")
    print("gateway-own = client-observed total minus the engine call the gateway timed (upload parse, decode,")
    print("trim, hash, store check, base64, JSON, loopback hops)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "overhead.json").write_text(json.dumps({"n": args.n, **summary, "p50_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
