"""The client commands of `sovits-gateway` run as subprocesses against a live gateway: output files decoded,
`--json` output, the exit codes (0 ok, 1 refused request or unreadable file, 2 usage, 3 service unavailable),
errors as one line on stderr, and the progress bar of `dub` on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.client import Client
from tests.client_support import assert_clip, gateway_before, reference_file
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import (
    REPO_ROOT,
    EngineProcess,
    decode_wav,
    engine_stats,
    free_port,
    make_reference,
    running_engine,
    set_engine_faults,
)

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def gateway(engine_v2: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with gateway_before(engine_v2, tmp_path_factory) as gw:
        yield gw


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_file(tmp_path_factory)


def cli(*args: str | Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` with GATEWAY_URL set to `url` (when given)."""
    env = {**os.environ, "GATEWAY_URL": url} if url else {k: v for k, v in os.environ.items() if k != "GATEWAY_URL"}
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=120)


def assert_one_line_error(run: subprocess.CompletedProcess[str], code: int, contains: str) -> None:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sovits-gateway: error: "), run.stderr
    assert contains in lines[0] and "Traceback" not in run.stderr


def test_clone_writes_the_wav_and_reports_it(gateway: GatewayServer, ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    run = cli("clone", TEXT, "--speaker", ref, "--prompt-text", "A reference recording.", "--language", "en",
              "--set", "seed=7", "-o", out, url=gateway.url)
    assert run.returncode == 0, run.stderr
    seconds = assert_clip(out.read_bytes())
    assert run.stdout.startswith(f"{out}: {seconds:.2f} s at 32000 Hz (request ")
    run = cli("clone", TEXT, "--speaker", ref, "-o", out, "--json", "--url", gateway.url)
    answer = json.loads(run.stdout)
    assert answer["output"] == str(out) and answer["output_sample_rate"] == 32000
    assert "output_audio_base64" not in answer and abs(answer["output_duration"] - assert_clip(out.read_bytes())) < 0.01


def test_voices_add_list_default_rm(gateway: GatewayServer, ref: Path, tmp_path: Path) -> None:
    added = cli("voices", "add", "Narrator", ref, "--prompt-text", "A reference recording.", "--prompt-language",
                "en", "--default", "--json", url=gateway.url)
    assert added.returncode == 0, added.stderr
    voice = json.loads(added.stdout)
    assert voice["name"] == "Narrator" and voice["is_default"] is True
    listed = cli("voices", "list", url=gateway.url)
    assert listed.returncode == 0 and listed.stdout == (
        f"{voice['id']}  Narrator  (default)  {voice['reference_duration']:.1f} s  en  'A reference recording.'\n")
    shown = cli("voices", "default", "--json", url=gateway.url)
    assert json.loads(shown.stdout) == {"voice_id": voice["id"]}
    out = tmp_path / "narrated.wav"
    assert cli("clone", TEXT, "--voice", "narrator", "-o", out, url=gateway.url).returncode == 0
    assert_clip(out.read_bytes())
    assert cli("voices", "default", "--clear", url=gateway.url).stdout.strip() == "no default voice"
    removed = cli("voices", "rm", "narrator", url=gateway.url)
    assert removed.returncode == 0 and removed.stdout.strip() == f"deleted {voice['id']} (Narrator)"
    assert_one_line_error(cli("voices", "rm", "narrator", url=gateway.url), 1, "voice_not_found")


def test_exit_codes_tell_a_refused_request_from_an_unavailable_service(
    gateway: GatewayServer, ref: Path, tmp_path: Path
) -> None:
    short = make_reference(tmp_path / "short.wav", seconds=1.0)
    out = tmp_path / "never.wav"
    refused = cli("clone", TEXT, "--speaker", short, "-o", out, "--json", url=gateway.url)
    assert_one_line_error(refused, 1, "HTTP 422 reference_too_short: ")
    envelope = json.loads(refused.stdout)["error"]
    assert envelope["code"] == "reference_too_short" and envelope["status"] == 422 and envelope["request_id"]
    assert not out.exists()
    assert_one_line_error(cli("clone", TEXT, "--speaker", tmp_path / "missing.wav", "-o", out, url=gateway.url),
                          1, "missing.wav")
    usage = cli("clone", TEXT, "--speaker", short, url=gateway.url)  # no -o
    assert usage.returncode == 2 and "required: -o/--output" in usage.stderr
    assert_one_line_error(cli("dub", tmp_path / "x.srt", "--speaker", "BOB", "-o", out, url=gateway.url), 2,
                          "--speaker takes NAME=VALUE, got 'BOB'")
    with running_gateway(fast_settings(tmp_path / "shared", [f"http://127.0.0.1:{free_port()}"])) as down:
        unavailable = cli("clone", TEXT, "--speaker", ref, "-o", out, "--retries", "0", url=down.url)
    assert_one_line_error(unavailable, 3, "HTTP 503 engine_unavailable: ")
    nobody = cli("voices", "list", "--retries", "0", url=f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(nobody, 3, "cannot connect to the gateway")


def test_dub_runs_a_job_with_a_progress_bar(gateway: GatewayServer, ref: Path, tmp_path: Path) -> None:
    with Client(gateway.url) as client:
        voice = client.create_voice("dubber", ref, prompt_text="A reference recording.", prompt_language="en")
    srt = tmp_path / "lines.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:02,000\nWelcome back.\n\n2\n00:00:02,500 --> 00:00:04,500\n"
                   "Thanks, glad to be here.\n\n3\n00:00:05,000 --> 00:00:07,000\nSee you soon.\n")
    track = tmp_path / "track.wav"
    run = cli("dub", srt, "--voice", "dubber", "--language", "en", "-o", track, url=gateway.url)
    assert run.returncode == 0, run.stderr
    bar = run.stderr.strip().splitlines()
    assert bar[-1] == f"[{'#' * 30}] 3/3 lines 100%  done", run.stderr
    assert all(line.startswith("[") and " lines " in line for line in bar) and len(bar) >= 2
    samples, rate = decode_wav(track.read_bytes())
    assert rate == 32000 and len(samples) / rate > 5.0  # the last line starts at 5 s
    assert run.stdout.strip().endswith("done, 3 of 3 lines placed")
    quiet = cli("dub", srt, "--voice", voice.id, "--language", "en", "-o", tmp_path / "t.flac", "--json",
                url=gateway.url)
    assert quiet.returncode == 0 and quiet.stderr == ""
    job = json.loads(quiet.stdout)
    assert job["status"] == "done" and job["output"] == str(tmp_path / "t.flac") and job["format"] == "flac"


def test_clone_and_voices_add_take_extra_references(
    gateway: GatewayServer, engine_v2: EngineProcess, ref: Path, tmp_path: Path
) -> None:
    extras = [make_reference(tmp_path / f"aux{i}.wav", seconds=3.5, f0=150.0 + 40 * i) for i in range(2)]
    out = tmp_path / "layered.wav"
    run = cli("clone", "With two more recordings.", "--speaker", ref, "--aux", extras[0], "--aux", extras[1],
              "--language", "en", "--quality-retries", "1", "-o", out, "--json", url=gateway.url)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["quality"]["ok"] is True and assert_clip(out.read_bytes()) > 0.5
    sent = [Path(p).stem for p in engine_stats(engine_v2.url)["aux_ref_audio_paths"]]
    assert len(set(sent)) == 2
    added = cli("voices", "add", "Layered", ref, "--aux", extras[0], "--aux", extras[1], "--json", url=gateway.url)
    assert added.returncode == 0 and json.loads(added.stdout)["aux_reference_sha256"] == sent
    again = cli("voices", "add", "Layered twin", ref, url=gateway.url)  # the same recording: a warning names it
    assert again.returncode == 0 and "sovits-gateway: warning: " in again.stderr and "Layered" in again.stderr
    for name in ("Layered", "Layered twin"):
        assert cli("voices", "rm", name, url=gateway.url).returncode == 0


def test_clone_says_when_the_output_is_suspect(ref: Path, tmp_path: Path) -> None:
    with running_engine("--debug-routes") as engine, running_gateway(
        fast_settings(tmp_path / "shared", [engine.url])
    ) as gw:
        set_engine_faults(engine.url, fault="mute")
        out = tmp_path / "mute.wav"
        run = cli("clone", TEXT, "--speaker", ref, "--language", "en", "--quality-retries", "1", "-o", out,
                  url=gw.url)
    assert run.returncode == 0, run.stderr  # an answer, written: the caller decides what a suspect clip is worth
    assert ", suspect: silent (request " in run.stdout and out.exists()
