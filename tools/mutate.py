"""`make mutate`: run mutmut over the pure units with their fast tests, then report the score.

Configuration lives in pyproject.toml ([tool.mutmut]: which modules are mutated, which test files run).
Every run starts from scratch (mutmut's cache under mutants/ is removed first), so the score always
describes the code and tests as they are. Afterwards this script reads mutmut's per-module results
(mutants/**/*.py.meta), writes every mutant that was not killed, with its diff, to mutants-survivors.txt,
prints them (each marked accepted, with the reason from tools/mutate_accepted.py, or NEW) and a
per-module table, and ends with exactly one line:

    mutation score: K killed of N (P %)

Counted as killed: mutants a test failed on, and those that hit mutmut's CPU-time limit or crashed the
test process (an endless loop or a crash is a detected change). Not killed: survivors, and mutants no
selected test even executes ("no tests"). Exit status 0 when the run completed, whatever the score.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutate_accepted import ACCEPTED  # tools/ is sys.path[0] when run as `python tools/mutate.py`

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
SURVIVORS_FILE = ROOT / "mutants-survivors.txt"
RUN_LOG = ROOT / "mutants-run.log"
ACCEPTED_FILE = "tools/mutate_accepted.py"

# mutmut 3's exit-code meanings (mutmut/stats.py), folded into what the score needs.
KILLED_CODES = {1: "killed", 3: "killed"}
TIMEOUT_CODES = {36, 24, -24, 152, 255}
CRASH_CODES = {-11, -9}
STATUS_BY_CODE = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious", 37: "type check"}


@dataclass(frozen=True)
class Mutant:
    name: str  # e.g. gateway.voices.store.xǁVoiceStoreǁcreate__mutmut_24
    module: str  # gateway/voices/store.py
    status: str  # killed | timeout | crashed | survived | no tests | ...

    @property
    def killed(self) -> bool:
        return self.status in ("killed", "timeout", "crashed", "type check")


def status_of(exit_code: int | None) -> str:
    if exit_code is None:
        return "not checked"
    if exit_code in KILLED_CODES:
        return "killed"
    if exit_code in TIMEOUT_CODES:
        return "timeout"
    if exit_code in CRASH_CODES:
        return "crashed"
    return STATUS_BY_CODE.get(exit_code, "suspicious")


def run_mutmut(jobs: int) -> float:
    """A fresh `mutmut run`; its (spinner-heavy) output goes to mutants-run.log. Returns the seconds taken."""
    shutil.rmtree(MUTANTS, ignore_errors=True)
    started = time.monotonic()
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)]
    print(f"$ {' '.join(command[1:])}  (output in {RUN_LOG.name})", flush=True)
    with RUN_LOG.open("wb") as log:
        code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        tail = RUN_LOG.read_bytes()[-3000:].decode(errors="replace").replace("\r", "\n")
        sys.exit(f"mutmut run failed with exit code {code}; end of {RUN_LOG.name}:\n{tail}")
    return time.monotonic() - started


def load_results() -> list[Mutant]:
    mutants: list[Mutant] = []
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        module = meta.relative_to(MUTANTS).as_posix().removesuffix(".meta")
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        mutants += [Mutant(name, module, status_of(code)) for name, code in sorted(exit_codes.items(), key=_natural)]
    if not mutants:
        sys.exit(f"no mutmut results under {MUTANTS}")
    return mutants


def _natural(item: tuple[str, int | None]) -> tuple[str, int]:
    function, _, number = item[0].rpartition("__mutmut_")
    return function, int(number) if number.isdigit() else 0


def function_sources(module: str) -> dict[str, list[str]]:
    """The lines of every function in mutmut's rewritten copy of `module` (originals and mutants), by name."""
    text = (MUTANTS / module).read_text(encoding="utf-8")
    lines = text.splitlines()
    return {
        node.name: lines[node.lineno - 1 : node.end_lineno]
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def mutant_diff(mutant: Mutant, sources: dict[str, list[str]]) -> list[str]:
    """The changed lines of one mutant against the original function (the def line aside)."""
    function = mutant.name.rsplit(".", 1)[1]
    original = sources.get(function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", [])
    changed = sources.get(function, [])
    lines = difflib.unified_diff(original[1:], changed[1:], lineterm="", n=0)
    return [line for line in lines if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def report(mutants: list[Mutant], seconds: float | None) -> None:
    not_killed = [m for m in mutants if not m.killed]
    sources = {module: function_sources(module) for module in {m.module for m in not_killed}}
    lines: list[str] = []
    new = 0
    for mutant in not_killed:
        diff = mutant_diff(mutant, sources[mutant.module])
        mutated = " | ".join(line[1:].strip() for line in diff if line.startswith("+"))
        line, reason = ACCEPTED.get(mutant.name, ("", ""))
        if reason and line == mutated:
            lines.append(f"{mutant.name}  [{mutant.status}; accepted: {reason}]")
        else:
            new += 1
            lines.append(
                f"{mutant.name}  [{mutant.status}; NEW: kill it with a test, or explain it in {ACCEPTED_FILE}]"
            )
        lines += [f"    {line}" for line in diff]
    SURVIVORS_FILE.write_text("\n".join(lines) + "\n" if lines else "", encoding="utf-8")

    if not_killed:
        print(f"\nmutants not killed ({len(not_killed)}; also in {SURVIVORS_FILE.name}):")
        print("\n".join(lines))
        print(f"\n{len(not_killed) - new} accepted (reasons in {ACCEPTED_FILE}), {new} NEW")
    print(f"\n{'per module:':<32} killed / total    score  survived  no tests  timeouts (counted as killed)")
    for module in sorted({m.module for m in mutants}):
        own = [m for m in mutants if m.module == module]
        counts = Counter(m.status for m in own)
        killed = sum(m.killed for m in own)
        print(
            f"  {module:<30} {killed:>6} / {len(own):<5} {100.0 * killed / len(own):5.1f} %"
            f" {counts['survived']:>9} {counts['no tests']:>9} {counts['timeout'] + counts['crashed']:>9}"
        )
    counts = Counter(m.status for m in mutants)
    timeouts = counts["timeout"] + counts["crashed"]
    if seconds is not None:
        print(f"\nmutmut run took {seconds:.0f} s")
    print(f"timeouts and crashes counted as killed: {timeouts}")
    killed = sum(m.killed for m in mutants)
    print(f"mutation score: {killed} killed of {len(mutants)} ({100.0 * killed / len(mutants):.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATE_JOBS", os.cpu_count() or 2)))
    parser.add_argument("--report-only", action="store_true", help="report the results of the last run")
    args = parser.parse_args()
    seconds = None if args.report_only else run_mutmut(args.jobs)
    report(load_results(), seconds)


if __name__ == "__main__":
    main()
