"""The service itself: /, /health, /health/live, /model-status, /load-model, /metrics."""

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from ...engine.types import LOADING, WARMING_UP
from ..deps import EngineDep, MetricsDep
from ..errors import error_responses

router = APIRouter(tags=["service"])


@router.get("/", summary="Service, model and endpoints")
async def root(request: Request, engine: EngineDep) -> dict:
    """What this service is, which model it serves, and its endpoints."""
    paths = request.app.openapi()["paths"]
    routes = sorted(f"{method.upper()} {path}" for path, ops in paths.items() for method in ops)
    return {"service": f"flux-{engine.service}", "model": engine.model, "backend": engine.backend_name(),
            "state": engine.health()["phase"], "docs": "/docs", "endpoints": routes}


@router.get("/health", summary="Readiness: 200 once the model can generate",
            responses={503: {"description": "Not ready: loading, failed, no replica can generate, or a parallel group restarting"}})
async def health(engine: EngineDep) -> JSONResponse:
    """200 when the model is loaded and warmed up (`degraded`, naming them, when some replicas' workers
    stopped); 503 with the phase (or the error) before that, when no replica can generate, or while a
    placement=parallel group restarts (`restarting`; requests wait for it)."""
    h = engine.health()
    dead = h["replicas"]["dead"]
    if h["ready"] and h.get("restarting"):  # placement=parallel: its group is being restarted; requests wait
        return JSONResponse({"status": "restarting", "replicas": h["replicas"]}, status_code=503,
                            headers={"Retry-After": "5"})
    if h["ready"]:
        if not dead:
            return JSONResponse({"status": "ok"})
        # Some replicas' workers stopped: the others still serve, at less capacity.
        return JSONResponse({"status": "degraded", "replicas": h["replicas"], "error": h["error"]})
    if dead:
        status = "failed"  # loaded, but no worker is left to generate
    else:
        status = "loading" if h["phase"] in (LOADING, WARMING_UP) else h["phase"]
    body = {"status": status, "phase": h["phase"], "replicas": h["replicas"]}
    if h["error"]:
        body["error"] = h["error"]
    retry = {"Retry-After": "5"} if status == "loading" else None
    return JSONResponse(body, status_code=503, headers=retry)


@router.get("/health/live", summary="Liveness: 200 whenever the process is up")
async def live() -> dict:
    """The process answers; says nothing about the model."""
    return {"status": "alive"}


@router.get("/model-status", summary="Model state, source, precision, placement and memory")
async def model_status(engine: EngineDep) -> dict:
    """Loaded state or loading phase, model source, backend and precision actually in use, placement,
    each device's memory, the queue and the LoRA state."""
    return await engine.status()


@router.post("/load-model", summary="Load the model if it is not loaded (idempotent)",
             responses={202: {"description": "Loading (started now or earlier)"}, **error_responses(503)})
async def load_model(engine: EngineDep,
                     wait: bool = Query(False, description="Answer only once loading has finished.")) -> JSONResponse:
    """Start loading unless the model is loaded or loading. Never loads a second copy. 200 when loaded,
    202 while loading, 503 when the load failed."""
    body = await engine.load(wait)
    return JSONResponse(body, status_code={"loaded": 200, "loading": 202}.get(body["status"], 503))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(metrics: MetricsDep) -> Response:
    """Requests by route and status, queue depth, wait and inference histograms, images, GPU memory."""
    return Response(metrics.render(), media_type=metrics.content_type)
