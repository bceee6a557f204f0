"""create_app(settings): the FastAPI app of one service, with a lifespan that loads and frees the model."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from . import __version__
from .api.access import install_access
from .api.deps import reject_unexpected_input
from .api.errors import install_error_handlers
from .api.middleware import BodyLimitMiddleware, HeadAsGet, RequestIdMiddleware
from .api.links import ResultLinks
from .api.openapi import install_body_schema
from .api.pages import install_pages
from .api.webhooks import Webhooks
from .api.routes import api_router, v1
from .api.routes.v1 import build_openai_requests
from .engine.client import EngineClient, LocalEngine
from .engine.manager import FluxModelManager
from .engine.services import MANAGERS
from .errors import FluxAPIError
from .limits import MAX_IMAGES
from .metrics import Metrics
from .schemas import build_generate_request, build_job_request
from .settings import ServiceSettings

log = logging.getLogger("flux_api")
DESCRIPTIONS = {
    "fp4": "FLUX.1-dev text-to-image with a 4-bit (or fp8/int8) quantized transformer.",
    "bf16": "FLUX.1-dev text-to-image at full precision (bf16).",
}


def build_manager(settings: ServiceSettings) -> FluxModelManager:
    return MANAGERS[settings.service](settings)


def create_app(settings: ServiceSettings, manager: FluxModelManager | None = None,
               engine: EngineClient | None = None) -> FastAPI:
    """The app of one service. The engine defaults to a LocalEngine over `manager` (or a new one)."""
    engine = engine if engine is not None else LocalEngine(manager if manager is not None else build_manager(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await engine.start()
        except (FluxAPIError, ValueError) as e:
            log.error("start-up stopped: %s", getattr(e, "message", e))
            raise
        yield
        # SIGTERM lands here after uvicorn's graceful wait. Under `python -m flux_api` the signal already
        # cancelled queued work (server.py: engine.begin_shutdown); stop() cancels whatever is still
        # queued, lets running work finish (or stops it after the grace), then frees the memory.
        await engine.stop()
        await app.state.webhooks.close()  # after the engine: every job has ended; last attempts, the rest logged

    app = FastAPI(
        title=f"FLUX {settings.service.upper()} service",
        description=DESCRIPTIONS[settings.service] + " Same contract on both services (FP4 :8000, BF16 :8001).",
        version=__version__,
        lifespan=lifespan,
        dependencies=[Depends(reject_unexpected_input)],
        redirect_slashes=False,  # /generate/ is a 404, not a redirect built from the client's Host header
        docs_url=None, redoc_url=None,  # served by install_pages from the app's own files: no CDN
    )
    metrics = Metrics(engine)
    app.state.engine = engine
    app.state.manager = getattr(engine, "manager", None)  # the local engine's manager, for tests and tools
    app.state.settings = settings
    app.state.metrics = metrics
    # a front that routes between services (Ray Serve's ingress) offers them in a `service` field
    app.state.generate_request = build_generate_request(settings, getattr(engine, "routes", ()))
    app.state.openai_requests = build_openai_requests(app.state.generate_request, settings)
    app.state.job_request = build_job_request(app.state.generate_request, settings)
    app.state.webhooks = Webhooks(settings, engine)
    app.state.result_links = ResultLinks(settings.jobs_keep_s, settings.jobs_keep * MAX_IMAGES)
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(v1.router)  # its own error shape and statuses (OpenAI's), not api_router's
    install_body_schema(app, [app.state.generate_request, app.state.job_request, *app.state.openai_requests.values()])
    install_pages(app)  # /ui, /docs, /redoc
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_access(app, settings)  # API keys (401 before a body is read), CORS around them
    app.add_middleware(RequestIdMiddleware, metrics=metrics)  # added last: outermost, sees every answer
    return app
