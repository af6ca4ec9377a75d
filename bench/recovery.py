"""Recovery benchmark: how soon a gateway serves after its engine (re)starts (issue 9, item 4).

A gateway process starts before its engine (the compose/systemd case); a client sends voice-clone requests
back to back all along. Each round starts the engine, and measures from the moment the engine first
answers `GET /openapi.json` (polled every 5 ms): the delay to the gateway's first 200 answer (one CPU
synthesis, ~1 s, is part of it), how many requests sent after that moment were refused, and when
`/readyz` turned ready. Then the engine is killed and the
next round restarts it on the same port.

    .venv/bin/python bench/recovery.py --rounds 3
    .venv/bin/python bench/recovery.py --rounds 3 --down-probe-interval 5   # down engines probed rarely
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._procs import free_port, gateway  # noqa: E402
from tests.gateway_support import clone  # noqa: E402
from tests.support import make_reference  # noqa: E402


def first_answer(url: str, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.005)
    raise TimeoutError(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of traffic after each start")
    parser.add_argument("--down-probe-interval", type=float, default=None, help="GATEWAY_DOWN_PROBE_INTERVAL")
    args = parser.parse_args()
    port = free_port()
    engine_url = f"http://127.0.0.1:{port}"
    engine_cmd = [sys.executable, "-m", "gateway.cpu_engine", "--flavor", "v2", "--port", str(port)]
    env = {} if args.down_probe_interval is None else {"GATEWAY_DOWN_PROBE_INTERVAL": str(args.down_probe_interval)}
    with tempfile.TemporaryDirectory() as tmp, gateway([engine_url], Path(tmp) / "shared", **env) as gw:
        reference = make_reference(Path(tmp) / "ref.wav", seconds=5.0).read_bytes()
        sent: list[tuple[float, float, int]] = []  # (sent at, answered at, status)
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                at = time.monotonic()
                try:
                    status = clone(gw, reference, text="A short sentence.", timeout=60).status_code
                except httpx.HTTPError:
                    status = 0
                sent.append((at, time.monotonic(), status))

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        rows = []
        try:
            for _ in range(args.rounds):
                time.sleep(1.0)  # the client meets a gateway without an engine
                proc = subprocess.Popen(engine_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    up = first_answer(f"{engine_url}/openapi.json")
                    ready = first_answer(f"{gw}/readyz") - up
                    time.sleep(args.settle)
                finally:
                    proc.kill()
                    proc.wait()
                after = [status for at, _, status in sent if up <= at < up + args.settle - 1.0]
                refused = [status for status in after if status != 200]
                served = [done for _, done, status in sent if done >= up and status == 200]
                first_ok = (min(served) - up) if served else float("nan")
                rows.append((first_ok, len(refused), len(after), ready))
        finally:
            stop.set()
            thread.join(60)
    print(f"{'round':>5} {'first 200 answered (s)':>23} {'refused after up':>17} {'/readyz ready after (s)':>24}")
    for index, (first_ok, count, total, ready) in enumerate(rows, 1):
        print(f"{index:>5} {first_ok:>23.3f} {count:>8} of {total:<6} {ready:>24.3f}")
    print(f"median /readyz delay {statistics.median(r[3] for r in rows):.3f} s; "
          f"refusals after the engine answered: {sum(r[1] for r in rows)} in {len(rows)} starts")


if __name__ == "__main__":
    main()
