"""The client commands of `sovits-gateway`: `clone`, `voices add|list|rm|default`, `dub`.

Exit codes tell a script whose fault a failure was: 0 success; 1 the request was refused as wrong (a 4xx: bad
reference, unknown voice, ...) or a local file could not be read or written; 2 the command line is wrong
(argparse); 3 the service could not serve it (429, 5xx, no connection; after the client's retries); 4 a dubbing
job finished but not every line was spoken (`failed` or `cancelled`; the track of the spoken lines is written).
Errors are one line on stderr (and, with `--json`, the error envelope on stdout), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.client import Client, GatewayAPIError, Job, RequestError, Voice

EXIT_OK, EXIT_REQUEST, EXIT_USAGE, EXIT_SERVICE, EXIT_JOB_INCOMPLETE = 0, 1, 2, 3, 4
_VOICE_ID_PREFIX = "voice_"


def _emit(args: argparse.Namespace, data: Any, line: str) -> None:
    """`--json`: the data as JSON on stdout; otherwise a line for people."""
    print(json.dumps(data, indent=2, default=str) if args.json else line)


class UsageError(Exception):
    """A command-line value argparse could not check (exit code 2, as argparse's own)."""


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    """`--set key=value` (request fields passed through: engine knobs, newer gateway options) and
    `--speaker NAME=REF.wav` pairs."""
    pairs = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise UsageError(f"{flag} takes NAME=VALUE, got {value!r}")
        pairs[key] = rest
    return pairs


def _resolve_voice(client: Client, name_or_id: str) -> Voice:
    """A voice by id, or by name (case-insensitive), as the synthesis routes resolve them."""
    if name_or_id.startswith(_VOICE_ID_PREFIX):
        return client.get_voice(name_or_id)
    for voice in client.list_voices():
        if voice.name.lower() == name_or_id.lower():
            return voice
    raise RequestError(f"no voice named {name_or_id!r}", status=404, code="voice_not_found")


def _voice_line(voice: Voice) -> str:
    seconds = voice.data.get("reference_duration")
    return (f"{voice.id}  {voice.name}{'  (default)' if voice.is_default else ''}  "
            f"{seconds:.1f} s  {voice.prompt_language}  {voice.prompt_text!r}")


# ------------------------------------------------------------------------------------------------- commands


def _clone(client: Client, args: argparse.Namespace) -> int:
    fields = _pairs(args.set, "--set")
    result = client.clone(args.text, args.speaker, voice=args.voice, aux_references=args.aux,
                          text_language=args.language, prompt_text=args.prompt_text,
                          prompt_language=args.prompt_language, quality_retries=args.quality_retries,
                          min_similarity=args.min_similarity, **fields)
    result.save(args.output)
    quality = result.quality or {}
    suspect = "" if quality.get("ok", True) else f", suspect: {', '.join(quality.get('problems') or [])}"
    _emit(args, {**result.metadata, "output": str(args.output)},
          f"{args.output}: {result.duration:.2f} s at {result.sample_rate} Hz{suspect} (request {result.request_id})")
    return EXIT_OK


def _voices_add(client: Client, args: argparse.Namespace) -> int:
    voice = client.create_voice(args.name, args.audio, aux_references=args.aux, prompt_text=args.prompt_text,
                                prompt_language=args.prompt_language, description=args.description)
    if not args.json:
        for warning in voice.data.get("warnings") or []:  # e.g. it sounds like a voice already in the library
            print(f"sovits-gateway: warning: {warning}", file=sys.stderr)
    if args.default:
        client.set_default_voice(voice.id)
        voice = client.get_voice(voice.id)
    _emit(args, voice.data, _voice_line(voice))
    return EXIT_OK


def _voices_list(client: Client, args: argparse.Namespace) -> int:
    voices = client.list_voices()
    _emit(args, {"voices": [v.data for v in voices]}, "\n".join(map(_voice_line, voices)) or "no voices yet")
    return EXIT_OK


def _voices_rm(client: Client, args: argparse.Namespace) -> int:
    voice = _resolve_voice(client, args.voice)
    client.delete_voice(voice.id)
    _emit(args, {"deleted": voice.id}, f"deleted {voice.id} ({voice.name})")
    return EXIT_OK


def _voices_default(client: Client, args: argparse.Namespace) -> int:
    if args.clear or args.voice:
        client.set_default_voice(None if args.clear else _resolve_voice(client, args.voice).id)
    voice_id = client.default_voice()
    voice = client.get_voice(voice_id) if voice_id else None
    _emit(args, {"voice_id": voice_id}, _voice_line(voice) if voice else "no default voice")
    return EXIT_OK


class ProgressBar:
    """A text bar on stderr: redrawn in place on a terminal, one line per change elsewhere (logs, CI)."""

    def __init__(self, width: int = 30) -> None:
        self.width, self.tty, self.last = width, sys.stderr.isatty(), ""

    def __call__(self, job: Job) -> None:
        progress = job.progress
        total, finished = progress.get("total", 0), progress.get("done", 0) + progress.get("failed", 0)
        filled = int(self.width * progress.get("fraction", 0.0))
        failed = f", {progress['failed']} failed" if progress.get("failed") else ""
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {finished}/{total} lines "
                f"{100 * progress.get('fraction', 0.0):3.0f}%  {job.status}{failed}")
        if line != self.last:
            sys.stderr.write(("\r" if self.tty else "") + line + ("" if self.tty else "\n"))
            sys.stderr.flush()
            self.last = line

    def close(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")


def _dub(client: Client, args: argparse.Namespace) -> int:
    speakers = _pairs(args.speaker, "--speaker")
    job = client.submit_job(
        subtitles=args.subtitles, source_subtitles=args.source_subtitles, source_audio=args.source_audio,
        speakers=speakers or None, idempotency_key=args.idempotency_key, voice=args.voice, language=args.language,
        source_language=args.source_language, format=args.format or args.output.suffix.lstrip(".") or None,
        **_pairs(args.set, "--set"),
    )
    bar = None if args.json else ProgressBar()
    try:
        job = client.wait_for_job(job.id, on_progress=bar)
    finally:
        if bar is not None:
            bar.close()
    placed = 0
    if job.progress.get("done"):
        placed = client.download_track(job.id, args.output).segments
    _emit(args, {**job.data, "output": str(args.output) if placed else None},
          f"{args.output if placed else 'no track'}: job {job.id} {job.status}, {placed} of "
          f"{job.progress.get('total', 0)} lines placed")
    return EXIT_OK if job.status == "done" else EXIT_JOB_INCOMPLETE


# ------------------------------------------------------------------------------------------------- wiring


def _run(command: Callable[[Client, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with Client(args.url, max_retries=args.retries) as client:
                return command(client, args)
        except GatewayAPIError as exc:
            if args.json:
                print(json.dumps({"error": {"status": exc.status, "code": exc.code, "message": exc.message,
                                            "request_id": exc.request_id, "retry_after": exc.retry_after,
                                            "attempts": exc.attempts, **exc.details}}, default=str))
            print(f"sovits-gateway: error: {exc}", file=sys.stderr)
            return EXIT_REQUEST if isinstance(exc, RequestError) else EXIT_SERVICE
        except KeyboardInterrupt:  # a job keeps running on the gateway: `GET /v1/jobs` lists it
            print("sovits-gateway: interrupted", file=sys.stderr)
            return 130
        except UsageError as exc:
            print(f"sovits-gateway: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:  # a reference or subtitle file that cannot be read, an output that cannot be written
            print(f"sovits-gateway: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
            return EXIT_REQUEST

    return run


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`clone`, `voices ...` and `dub` on the `sovits-gateway` parser; each sets `run(args) -> exit code`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the gateway (default: $GATEWAY_URL, else http://127.0.0.1:8000)")
    common.add_argument("--json", action="store_true", help="print JSON on stdout (for scripts); no progress bar")
    common.add_argument("--retries", type=int, default=3, help="retries after 429/503/no connection (default 3)")
    synth = argparse.ArgumentParser(add_help=False)
    synth.add_argument("--language", help="language of the text (default: auto)")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other request field (engine knobs: top_k=5, seed=7, speed=1.1, ...); repeatable")

    clone = commands.add_parser("clone", parents=[common, synth], help="clone a voice: text + reference → WAV")
    clone.add_argument("text")
    reference = clone.add_mutually_exclusive_group()
    reference.add_argument("--speaker", type=Path, help="reference recording (3-10 s)")
    reference.add_argument("--voice", help="a library voice (id or name); neither: the default voice")
    clone.add_argument("--prompt-text", help="what is said in the reference (empty: reference-free mode)")
    clone.add_argument("--prompt-language", help="language of the reference (default: the text's)")
    clone.add_argument("--aux", action="append", type=Path, default=[], metavar="REF.wav",
                       help="another recording of the same voice (api_v2 engines fuse the timbre); repeatable")
    clone.add_argument("--quality-retries", type=int, metavar="N",
                       help="render again (new seed) when the output fails the quality checks, up to N times (max 3)")
    clone.add_argument("--min-similarity", type=float, metavar="X",
                       help="also require this speaker similarity to the reference (needs the quality extra)")
    clone.add_argument("-o", "--output", type=Path, required=True, help="where to write the WAV")
    clone.set_defaults(run=_run(_clone))

    voices = commands.add_parser("voices", help="the voice library: add, list, rm, default").add_subparsers(
        dest="voices_command", required=True)
    add = voices.add_parser("add", parents=[common], help="register a reference as a named voice")
    add.add_argument("name")
    add.add_argument("audio", type=Path, help="reference recording (3-10 s)")
    add.add_argument("--prompt-text", default="", help="what is said in the recording")
    add.add_argument("--prompt-language", default="auto")
    add.add_argument("--description")
    add.add_argument("--aux", action="append", type=Path, default=[], metavar="REF.wav",
                     help="another recording of the same voice, kept with it; repeatable")
    add.add_argument("--default", action="store_true", help="also make it the default voice")
    add.set_defaults(run=_run(_voices_add))
    voices.add_parser("list", parents=[common], help="list voices").set_defaults(run=_run(_voices_list))
    rm = voices.add_parser("rm", parents=[common], help="delete a voice (id or name)")
    rm.add_argument("voice")
    rm.set_defaults(run=_run(_voices_rm))
    default = voices.add_parser("default", parents=[common], help="show, set (id or name) or --clear the default")
    default.add_argument("voice", nargs="?")
    default.add_argument("--clear", action="store_true")
    default.set_defaults(run=_run(_voices_default))

    dub = commands.add_parser("dub", parents=[common, synth], help="a dubbing job: subtitles → a timed voice track")
    dub.add_argument("subtitles", type=Path, help="SRT, WebVTT or ASS file with the lines to speak")
    dub.add_argument("--voice", help="default voice for lines without their own (id or name)")
    dub.add_argument("--source-audio", type=Path, help="the original recording: speakers' references are cut from it")
    dub.add_argument("--source-subtitles", type=Path, help="the original subtitles (the transcript of each cue)")
    dub.add_argument("--source-language", help="language of the original subtitles")
    dub.add_argument("--speaker", action="append", metavar="NAME=REF.wav", help="a reference for one speaker")
    dub.add_argument("--format", choices=("wav", "flac", "mp3"), help="track format (default: from -o)")
    dub.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    dub.add_argument("-o", "--output", type=Path, required=True, help="where to write the track")
    dub.set_defaults(run=_run(_dub))
