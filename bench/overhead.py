"""Gateway overhead against an engine that answers at once (`cpu-engine --instant`), so only the gateway shows.

One run starts the instant engine and the gateway (GATEWAY_ENGINE_CONCURRENCY=16), then alternates, round
after round in a rotating order: a direct engine call, and through `/v1/voice-clone` (a) a known reference
uploaded again, (b) a new reference each time, (c) a `voice_id`. It reports p50/p99 of each, what the
gateway adds (its percentile minus the direct one), the gateway process's CPU time per request
(/proc/<pid>/stat), and c=16 throughput through the gateway vs direct. Single runs move by tens of percent
here (DESIGN §8), so it does `--runs` (3) runs on fresh processes and quotes the median of each figure.
Not a test: it prints figures and writes bench/results/overhead.json.

    python -m bench.overhead [-n 400] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from bench._procs import cpu_seconds, engine_process, gateway_process, percentile
from bench._wire import Connection, post_form, post_json, throughput

TEXT = "The gateway adds almost nothing to this call."
FIELDS = {"text": TEXT, "text_language": "en", "prompt_language": "en"}
TARGETS = {  # issue 9: added ms (p50, p99) and gateway CPU ms per request
    "a": "(a) known reference: <= 1.5 ms p50 / <= 2.5 ms p99 added, <= 1.5 ms CPU",
    "b": "(b) new reference: <= 4 ms p50 added",
    "c": "(c) voice_id: <= 1 ms p50 added",
    "rps": "c=16 through the gateway: >= 500 requests/s",
}


def reference_wav(path: Path, seconds: float = 5.0, rate: int = 32000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 3 * t)) * 0.3
    sf.write(path, (voiced * envelope).astype(np.float32), rate, subtype="PCM_16")
    return path


def variant(wav: bytes, index: int) -> bytes:
    """The reference with one mid-clip sample nudged: new upload bytes and new prepared audio each time."""
    pcm = bytearray(wav)
    middle = 44 + (len(wav) - 44) // 4 * 2
    value = int.from_bytes(pcm[middle : middle + 2], "little", signed=True)
    pcm[middle : middle + 2] = max(-32768, min(32767, value + 1 + index % 1000)).to_bytes(2, "little", signed=True)
    pcm[middle + 2 : middle + 4] = (index // 1000).to_bytes(2, "little", signed=True)
    return bytes(pcm)


def check_clone(body: bytes) -> dict[str, object]:
    """A real answer: JSON carrying a decodable 5 s WAV."""
    answer: dict[str, object] = json.loads(body)
    audio, rate = sf.read(io.BytesIO(base64.b64decode(str(answer["output_audio_base64"]))))
    assert abs(len(audio) / rate - 5.0) < 0.01 and np.abs(audio).max() > 0.1, "not the instant engine's clip"
    return answer


def one_run(rounds: int, warmup: int, requests: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(tmp)
        ref = reference_wav(shared / "bench-ref.wav")
        ref_bytes = ref.read_bytes()
        with engine_process("--instant", "--log-level", "warning") as eng, \
                gateway_process([eng.url], shared, GATEWAY_ENGINE_CONCURRENCY="16") as gw:
            voice = httpx.post(f"{gw.url}/v1/voices", data={"name": "bench", "prompt_language": "en"},
                               files={"audio": ("ref.wav", ref_bytes, "audio/wav")}, timeout=30)
            voice.raise_for_status()
            direct_raw = post_json(eng.url, "/tts", {"text": TEXT, "text_lang": "en", "prompt_lang": "en",
                                                     "ref_audio_path": str(ref.resolve()), "media_type": "wav"})
            known_raw = post_form(gw.url, "/v1/voice-clone", FIELDS, {"audio": ("ref.wav", ref_bytes, "audio/wav")})
            voice_raw = post_form(gw.url, "/v1/voice-clone", {**FIELDS, "voice_id": voice.json()["id"]}, {})
            engine_conn, gateway_conn = Connection(eng.url), Connection(gw.url)
            counter = iter(range(10**9))

            def new_reference() -> bytes:
                return post_form(gw.url, "/v1/voice-clone", FIELDS,
                                 {"audio": ("ref.wav", variant(ref_bytes, next(counter)), "audio/wav")})

            builders: dict[str, Callable[[], bytes]] = {
                "direct": lambda: direct_raw, "a": lambda: known_raw, "b": new_reference, "c": lambda: voice_raw,
            }
            times: dict[str, list[float]] = {name: [] for name in builders}
            cpu: dict[str, float] = dict.fromkeys(builders, 0.0)
            for index in range(warmup + rounds):
                order = list(builders)
                order = order[index % 4 :] + order[: index % 4]  # rotate: no scenario always follows another
                for name in order:
                    raw = builders[name]()
                    conn = engine_conn if name == "direct" else gateway_conn
                    cpu_before = cpu_seconds(gw.pid)
                    started = time.perf_counter()
                    status, body = conn.request(raw)
                    elapsed = time.perf_counter() - started
                    cpu_after = cpu_seconds(gw.pid)
                    if status != 200:
                        raise RuntimeError(f"{name}: HTTP {status}: {body[:300]!r}")
                    if index == 0 and name != "direct":
                        check_clone(body)
                    if name == "b":  # keep the shared dir small: this reference is never sent again
                        (shared / "refs" / f"{json.loads(body)['reference_id']}.wav").unlink()
                    if index >= warmup:
                        times[name].append(elapsed * 1000)
                        cpu[name] += cpu_after - cpu_before
            engine_conn.close()
            gateway_conn.close()
            result: dict[str, float] = {}
            for name, values in times.items():
                result[f"{name}_p50"] = percentile(values, 50)
                result[f"{name}_p99"] = percentile(values, 99)
                if name != "direct":
                    result[f"{name}_added_p50"] = result[f"{name}_p50"] - result["direct_p50"]
                    result[f"{name}_added_p99"] = result[f"{name}_p99"] - result["direct_p99"]
                    result[f"{name}_cpu_ms"] = cpu[name] / len(values) * 1000
            result["direct_rps"], failed_direct = asyncio.run(
                throughput(eng.url, direct_raw, concurrency=16, total=requests))
            before = cpu_seconds(gw.pid)
            result["a_rps"], failed_a = asyncio.run(throughput(gw.url, known_raw, concurrency=16, total=requests))
            result["a_rps_cpu_ms"] = (cpu_seconds(gw.pid) - before) / requests * 1000
            result["c_rps"], failed_c = asyncio.run(throughput(gw.url, voice_raw, concurrency=16, total=requests))
            if failed_direct or failed_a or failed_c:
                raise RuntimeError(f"non-200 answers under load: {failed_direct}, {failed_a}, {failed_c}")
    return result


def report(runs: list[dict[str, float]], rounds: int) -> dict[str, float]:
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    spread = {key: (min(run[key] for run in runs), max(run[key] for run in runs)) for key in runs[0]}

    def cell(key: str, digits: int = 2) -> str:
        low, high = spread[key]
        return f"{median[key]:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"

    print(f"gateway overhead vs cpu-engine --instant: {len(runs)} runs x {rounds} rounds, 5 s reference, "
          f"{len(TEXT)}-char text, loopback; median of runs (min-max)")
    print(f"{'path':<26}{'p50 ms':>22}{'p99 ms':>22}{'added p50':>22}{'added p99':>22}{'gw CPU ms/req':>22}")
    labels = {"direct": "direct engine call", "a": "(a) known reference", "b": "(b) new reference",
              "c": "(c) voice_id"}
    for name, label in labels.items():
        row = f"{label:<26}{cell(f'{name}_p50'):>22}{cell(f'{name}_p99'):>22}"
        if name != "direct":
            row += f"{cell(f'{name}_added_p50'):>22}{cell(f'{name}_added_p99'):>22}{cell(f'{name}_cpu_ms'):>22}"
        print(row)
    print(f"c=16 throughput, requests/s: direct {cell('direct_rps', 0)}, gateway (a) {cell('a_rps', 0)} "
          f"[{cell('a_rps_cpu_ms')} gw CPU ms/req], gateway (c) {cell('c_rps', 0)}")
    print("targets: " + "; ".join(TARGETS.values()))
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--rounds", type=int, default=400, help="measured rounds per run (one of each path)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="requests per c=16 throughput measurement")
    args = parser.parse_args()
    runs = [one_run(args.rounds, args.warmup, args.requests) for _ in range(args.runs)]
    median = report(runs, args.rounds)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "overhead.json").write_text(json.dumps({"rounds": args.rounds, "median": median, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
