"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import __version__
from gateway.api.context import services
from gateway.auth import is_admin

router = APIRouter()


@router.get("/healthz", summary="Liveness: the gateway process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


def _writable(directory: Path) -> str | None:
    """None when a file can be created (and removed) in `directory`, else the reason."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(fd)
        os.unlink(name)
        return None
    except OSError as exc:
        return str(exc)


@router.get("/readyz", summary="Readiness: an engine can serve and the shared dir is writable")
async def readyz(request: Request, verbose: bool = False) -> JSONResponse:
    """Engines by id and state for everyone; engine URLs, the shared dir's path and its error (which names
    the path) only with `?verbose=1` and an admin key: they tell an attacker where the engines are."""
    svc = services(request)
    verbose = verbose and is_admin(request)  # engine URLs and paths: operators only
    problem = await anyio.to_thread.run_sync(_writable, svc.settings.refs_dir)
    pool: dict[str, Any] = svc.pool.status(verbose=verbose)
    ready = bool(pool.get("ready")) and problem is None
    shared: dict[str, Any] = {"writable": problem is None}
    if verbose:
        shared.update(path=str(svc.settings.shared_dir), error=problem)
    body = {"status": "ready" if ready else "not_ready", "shared_dir": shared, **pool}
    return JSONResponse(body, status_code=200 if ready else 503, headers={} if ready else {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
