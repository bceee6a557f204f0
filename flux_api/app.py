"""create_app(settings): the FastAPI app of one service, with a lifespan that loads and frees the model."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders

from . import __version__
from .api.errors import install_error_handlers
from .api.router import create_router
from .engine.base import FluxModelManager
from .engine.bf16 import BF16FluxModelManager
from .engine.fp4 import FP4FluxModelManager
from .errors import FluxAPIError
from .logs import request_id
from .metrics import Metrics
from .settings import ServiceSettings

log = logging.getLogger("flux_api")

MANAGERS: dict[str, type[FluxModelManager]] = {"bf16": BF16FluxModelManager, "fp4": FP4FluxModelManager}
DESCRIPTIONS = {
    "fp4": "FLUX.1-dev text-to-image with a 4-bit (or fp8/int8) quantized transformer.",
    "bf16": "FLUX.1-dev text-to-image at full precision (bf16).",
}
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestIdMiddleware:
    """Give every request an id (the client's X-Request-ID if sane), echo it, log and count the request."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        t0, status = time.perf_counter(), [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info("%s %s -> %d in %.1f ms", scope["method"], scope["path"], status[0], (time.perf_counter() - t0) * 1e3)
            route = getattr(scope.get("route"), "path", "unmatched")  # the template: /jobs/{job_id}
            self.metrics.observe_request(scope["method"], route, status[0])
            request_id.reset(token)


def build_manager(settings: ServiceSettings) -> FluxModelManager:
    return MANAGERS[settings.service](settings)


def create_app(settings: ServiceSettings, manager: FluxModelManager | None = None) -> FastAPI:
    manager = manager if manager is not None else build_manager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await asyncio.to_thread(manager.preflight)
        except (FluxAPIError, ValueError) as e:
            log.error("start-up stopped: %s", getattr(e, "message", e))
            raise
        # The model loads in the background so the process answers (/health/live, /health 503) at once.
        manager.start_background_load()
        yield
        # SIGTERM lands here after uvicorn stopped taking requests: queued work is cancelled, running
        # work finishes (or is stopped after the grace), then the memory is freed.
        await asyncio.to_thread(manager.unload, 30.0)

    app = FastAPI(
        title=f"FLUX {settings.service.upper()} service",
        description=DESCRIPTIONS[settings.service] + " Same contract on both services (FP4 :8000, BF16 :8001).",
        version=__version__,
        lifespan=lifespan,
    )
    metrics = Metrics(manager)
    app.state.manager = manager
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(create_router(manager, settings, metrics))
    app.add_middleware(RequestIdMiddleware, metrics=metrics)
    return app
