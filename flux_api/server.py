"""uvicorn's Server, with the engine told the moment a shutdown signal arrives.

uvicorn alone, on SIGTERM, stops accepting, waits (up to the graceful timeout) for open connections to
close, and only then runs the app's lifespan shutdown, which is where the engine cancels queued work.
A /generate waiting in the queue holds its connection open, so it would wait, and then run. Here the
signal also starts the engine's shutdown at once (`EngineClient.begin_shutdown`): no new work, queued
work cancelled, so those requests answer 503 shutting_down with Retry-After and their connections
close; running work goes on through uvicorn's graceful wait and the lifespan shutdown, as before.
uvicorn's own handling stays: a second Ctrl+C forces the exit, and the signal is re-raised at the end.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class EngineServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine):
        super().__init__(config)
        self.engine = engine  # an EngineClient
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A signal handler runs on the loop's thread between any two bytecodes, possibly while that
        # thread holds the scheduler's (re-entrant) lock half-way through a submit: the engine's
        # shutdown runs as the loop's next callback instead, at a clean point, within milliseconds.
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._begin_shutdown)
            except RuntimeError:  # the loop is closed: nothing left to cancel
                pass

    def _begin_shutdown(self) -> None:
        try:
            self.engine.begin_shutdown()  # idempotent: a second signal cancels nothing more
        except Exception:  # the lifespan shutdown still cancels and frees everything
            log.exception("begin_shutdown failed")
