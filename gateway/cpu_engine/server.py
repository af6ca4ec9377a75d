"""Command line of the CPU engine: `python -m gateway.cpu_engine --flavor v2|v1 --port 9880 ...`.

One uvicorn worker, one synthesizer, one lock: the same process model as the real engines.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from fastapi import FastAPI

from gateway.cpu_engine.app_v1 import create_app_v1
from gateway.cpu_engine.app_v2 import create_app_v2
from gateway.cpu_engine.debug import StallProbes, add_debug_routes
from gateway.cpu_engine.faults import FAULTS, FaultController, FaultSettings, PacedSynthesizer
from gateway.cpu_engine.instant import InstantSynthesizer
from gateway.cpu_engine.state import DefaultReference, EngineState
from gateway.languages import VERSION_SAMPLE_RATES

log = logging.getLogger("gateway.cpu_engine")

_DESCRIPTION = (
    "The embedded CPU engine of sovits-gateway. It is **not GPT-SoVITS**: it speaks the {protocol} HTTP "
    "protocol of a GPT-SoVITS engine (routes, fields, defaults, errors, streaming framing, one request at "
    "a time) and synthesizes with Piper/espeak-ng adapted to the reference's pitch, so the gateway and its "
    "tests run without a GPU."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sovits-gateway cpu-engine",
        description="CPU stand-in for a GPT-SoVITS engine (api_v2.py or api.py protocol), with fault injection.",
    )
    parser.add_argument("--flavor", choices=("v2", "v1"), default="v2",
                        help="protocol: v2 = api_v2.py (/tts), v1 = legacy api.py (/)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9880)
    parser.add_argument("--model-version", choices=tuple(VERSION_SAMPLE_RATES), default="v2",
                        help="loaded model version at start-up (languages, output rate)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--instant", action="store_true",
                        help="answer every synthesis at once with a fixed 5 s clip (same validation): for benchmarks")
    legacy = parser.add_argument_group("api.py flavour (api.py's -dr/-dt/-dl/-cp/-sm/-mt)")
    legacy.add_argument("--default-refer-path", default="")
    legacy.add_argument("--default-refer-text", default="")
    legacy.add_argument("--default-refer-language", default="")
    legacy.add_argument("--cut-punc", default="", help="default split punctuation, e.g. ',.。，'")
    legacy.add_argument("--stream-mode", default="close", help="close (default) or normal (per-segment chunks)")
    legacy.add_argument("--media-type", default="wav", help="wav (default), ogg or aac")
    faults = parser.add_argument_group("fault injection (all off by default)")
    faults.add_argument("--delay", type=float, default=0.0, help="seconds added to every synthesis")
    faults.add_argument("--segment-delay", type=float, default=0.0,
                        help="seconds added to every text segment (slow streaming)")
    faults.add_argument("--fault", choices=FAULTS, default=None, help="fault applied to synthesis requests")
    faults.add_argument("--fault-after", type=int, default=0, metavar="N",
                        help="let N admitted synthesis requests through healthy first")
    faults.add_argument("--fault-count", type=int, default=None, metavar="N",
                        help="stop the fault after N faulty requests (default: never)")
    faults.add_argument("--exit-after", type=int, default=None, metavar="N",
                        help="serve N synthesis requests, then crash (os._exit) on the next one")
    faults.add_argument("--debug-routes", action="store_true", help="enable GET /_stats and POST /_faults")
    faults.add_argument("--stall-probes", action="store_true",
                        help="v2: other routes (/openapi.json ...) wait while a mode-0 synthesis runs, like api_v2")
    return parser


def _legacy_modes(stream_mode: str, media_type: str) -> tuple[str, str]:
    """api.py's rules: `normal`/`n` streams; ogg/aac as given, else wav (ogg when streaming)."""
    stream = "normal" if stream_mode.lower() in ("normal", "n") else "close"
    if media_type.lower() in ("aac", "ogg"):
        return stream, media_type.lower()
    return stream, "wav" if stream == "close" else "ogg"


def build_state(args: argparse.Namespace, synthesizer: object) -> EngineState:
    default = DefaultReference(args.default_refer_path, args.default_refer_text, args.default_refer_language)
    if not default.is_ready():  # api.py keeps the default reference only when all three are given
        default = DefaultReference()
    stream_mode, media_type = _legacy_modes(args.stream_mode, args.media_type)
    settings = FaultSettings(fault=args.fault, delay=args.delay, segment_delay=args.segment_delay,
                             fault_after=args.fault_after, exit_after=args.exit_after,
                             fault_count=args.fault_count)
    return EngineState(
        flavor=args.flavor,
        version=args.model_version,
        synthesizer=PacedSynthesizer(synthesizer, settings) if args.segment_delay else synthesizer,
        faults=FaultController(settings),
        default_reference=default,
        default_cut_punc=args.cut_punc,
        stream_mode=stream_mode,
        media_type=media_type,
    )


def build_app(state: EngineState, *, debug_routes: bool, stall_probes: bool = False) -> FastAPI:
    if state.flavor == "v1":
        app = create_app_v1(state, title="sovits-gateway CPU engine (api.py flavour)",
                            description=_DESCRIPTION.format(protocol="legacy api.py"))
    else:
        app = create_app_v2(state, title="sovits-gateway CPU engine (api_v2 flavour)",
                            description=_DESCRIPTION.format(protocol="api_v2.py"))
    if debug_routes:
        add_debug_routes(app, state)
    if stall_probes and state.flavor == "v2":
        app.add_middleware(StallProbes, state=state)
    return app


#: Paths gateways poll to see whether an engine is up (engine-protocol §7); one access line each would bury
#: the real requests in `make run`'s terminal every few seconds.
PROBE_PATHS = frozenset({"/openapi.json"})


class QuietProbes(logging.Filter):
    """Demote access-log lines of health probes to debug (shown only with `--log-level debug`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) >= 3 and args[2] in PROBE_PATHS):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    synthesizer: object
    if args.instant:
        synthesizer = InstantSynthesizer()
    else:
        from gateway.cpu_engine.synth import Synthesizer  # loads the voice (~0.3 s): once, at start-up

        synthesizer = Synthesizer()
    state = build_state(args, synthesizer)
    app = build_app(state, debug_routes=args.debug_routes, stall_probes=args.stall_probes)
    log.info("CPU engine: flavour %s, model version %s, %s, faults %s", args.flavor, state.version,
             "instant canned clip" if args.instant else "CPU synthesis", state.faults.snapshot())
    # A short graceful-shutdown timeout: a request held by the `hang` fault never finishes by itself.
    config = uvicorn.Config(app, host=args.host, port=args.port, workers=1, log_level=args.log_level.lower(),
                            timeout_graceful_shutdown=2)
    # after Config: it (re)configures uvicorn's loggers, and dictConfig would not drop a filter added later
    logging.getLogger("uvicorn.access").addFilter(QuietProbes())
    uvicorn.Server(config).run()

