"""`/control?command=restart|exit`, shared by both flavours: neither command ever answers (§2.2, §3.2)."""

from __future__ import annotations

import logging
import os
import sys

from fastapi.responses import JSONResponse, Response

log = logging.getLogger("gateway.cpu_engine")


async def handle_control(command: str | None) -> Response:
    """`restart` re-executes the process with the same command line (same pid, models reloaded), `exit`
    ends it at once; the client sees the connection drop. Anything else answers 200 `null`."""
    if command == "restart":
        log.warning("control: restart (re-exec %s)", sys.orig_argv)
        logging.shutdown()
        # Listening and client sockets are close-on-exec, so the connection drops and the new process
        # can bind the same port again.
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    if command == "exit":
        log.warning("control: exit")
        logging.shutdown()
        os._exit(0)
    return JSONResponse(content=None)
