"""The `sovits-gateway` command: `serve` (the gateway), `cpu-engine` (the embedded engine), `stack` (both), `check`
(a deployment doctor, gateway/doctor.py), and the client commands `clone`, `voices`, `dub` (gateway/cli_client.py)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.cli_client import add_client_commands
from gateway.cli_keys import add_keys_command
from gateway.doctor import add_check_flags
from gateway.server import server_options
from gateway.settings import Settings


def _settings_from(args: argparse.Namespace) -> Settings:
    """Flags override GATEWAY_* variables and .env; unset flags leave them alone."""
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "engines": args.engines,
            "shared_dir": args.shared_dir,
            "engine_shared_dir": args.engine_shared_dir,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


def serve(settings: Settings) -> None:
    from gateway.app import create_app
    from gateway.auth import AuthConfigError
    from gateway.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    json_logs = settings.log_format == "json"
    try:
        app = create_app(settings)
    except AuthConfigError as exc:
        sys.exit(f"sovits-gateway: {exc}")  # one line on stderr, exit code 1
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        # json: uvicorn's loggers propagate to our JSON handler, and the gateway writes the one access line
        log_config=None if json_logs else uvicorn.config.LOGGING_CONFIG,
        access_log=not json_logs,
        **server_options(settings),  # header/body read timeouts and the connection cap (gateway/server.py)
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the CPU engine exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the CPU engine at {url} was not ready after {timeout:.0f} s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stack(args: argparse.Namespace) -> None:
    """The embedded default: one CPU engine and the gateway on 127.0.0.1; Ctrl-C stops both."""
    engine_url = f"http://127.0.0.1:{args.engine_port}"
    args.engines = args.engines or engine_url
    settings = _settings_from(args)
    settings.shared_dir.mkdir(parents=True, exist_ok=True)
    engine_cmd = [sys.executable, "-m", "gateway.cpu_engine", "--flavor", args.flavor,
                  "--host", "127.0.0.1", "--port", str(args.engine_port)]
    engine = subprocess.Popen(engine_cmd)
    # uvicorn re-raises SIGTERM after its shutdown; as KeyboardInterrupt it reaches the `finally` below, so
    # `docker stop` / systemd stop the engine too, not only Ctrl-C
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _wait_ready(engine_url, engine)
        print(
            f"\n  CPU engine  {engine_url}  (api_{'v2' if args.flavor == 'v2' else 'py'} flavour)"
            f"\n  gateway     http://{settings.host}:{settings.port}   (docs: /docs)"
            f"\n  shared dir  {Path(settings.shared_dir).resolve()}\n  Ctrl-C stops both.\n",
            flush=True,
        )
        serve(settings)
    except KeyboardInterrupt:
        pass
    finally:
        engine.terminate()
        try:
            engine.wait(10)
        except subprocess.TimeoutExpired:
            engine.kill()


def _add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (GATEWAY_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (GATEWAY_PORT, default 8000)")
    parser.add_argument("--engines", help="comma-separated engine URLs (GATEWAY_ENGINES)")
    parser.add_argument("--shared-dir", type=Path, help="where references are written (GATEWAY_SHARED_DIR)")
    parser.add_argument("--engine-shared-dir", type=Path, help="the shared dir as engines see it")
    parser.add_argument("--log-level", help="debug, info, warning (GATEWAY_LOG_LEVEL)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cpu-engine"]:
        from gateway.cpu_engine.server import main as engine_main

        engine_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="sovits-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_gateway_flags(commands.add_parser("serve", help="run the gateway"))
    stack_parser = commands.add_parser("stack", help="run a CPU engine and the gateway together")
    _add_gateway_flags(stack_parser)
    stack_parser.add_argument("--engine-port", type=int, default=9880)
    stack_parser.add_argument("--flavor", choices=("v2", "v1"), default="v2")
    commands.add_parser("cpu-engine", help="run the embedded CPU engine (see: cpu-engine --help)")
    check_parser = commands.add_parser("check", help="check a deployment: settings, shared dir, engines (exit 0/1)")
    _add_gateway_flags(check_parser)
    add_check_flags(check_parser, _settings_from)
    add_client_commands(commands)
    add_keys_command(commands)
    args = parser.parse_args(argv)
    if hasattr(args, "run"):
        sys.exit(args.run(args))
    if args.command == "serve":
        serve(_settings_from(args))
    elif args.command == "stack":
        stack(args)
