"""create_router: the one set of routes both services use.

(No `from __future__ import annotations` here: FastAPI must see the per-settings GenerateRequest
class itself, not a string naming it.)

Routes are thin: they turn the request into engine calls, queue GPU work on the manager's scheduler,
and turn the result into a response. They know nothing of torch.
"""

import asyncio
import time

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response

from ..engine.base import LOADING, WARMING_UP, FluxModelManager
from ..imaging import MEDIA_TYPES
from ..logs import request_id
from ..metrics import Metrics
from ..schemas import ApplyLoraRequest, GenerateResponse, RemoveLoraRequest, build_generate_request
from ..settings import ServiceSettings
from .errors import error_responses
from .generation import build_response, lora_specs, output_format, to_params, wait_for, wants_raw
from .jobs import create_jobs_router

ERRORS = error_responses(404, 422, 429, 500, 503, 504)


def create_router(manager: FluxModelManager, settings: ServiceSettings, metrics: Metrics) -> APIRouter:
    GenerateRequest = build_generate_request(settings)
    router = APIRouter()

    @router.get("/", summary="Service, model and endpoints")
    async def root(request: Request) -> dict:
        """What this service is, which model it serves, and its endpoints."""
        paths = request.app.openapi()["paths"]
        routes = sorted(f"{method.upper()} {path}" for path, ops in paths.items() for method in ops)
        return {
            "service": f"flux-{settings.service}", "model": settings.model, "backend": manager.backend,
            "state": manager.phase, "docs": "/docs", "endpoints": routes,
        }

    @router.get("/health", summary="Readiness: 200 once the model can generate")
    async def health() -> JSONResponse:
        """200 when the model is loaded and warmed up; 503 with the phase (or the error) before that."""
        if manager.ready:
            return JSONResponse({"status": "ok"})
        status = "loading" if manager.phase in (LOADING, WARMING_UP) else manager.phase
        body = {"status": status, "phase": manager.phase}
        if manager.error:
            body["error"] = manager.error
        return JSONResponse(body, status_code=503)

    @router.get("/health/live", summary="Liveness: 200 whenever the process is up")
    async def live() -> dict:
        """The process answers; says nothing about the model."""
        return {"status": "alive"}

    @router.get("/model-status", summary="Model state, source, precision, placement and memory")
    async def model_status() -> dict:
        """Loaded state or loading phase, model source, backend and precision actually in use, placement,
        each device's memory, the queue and the LoRA state."""
        return manager.status()

    @router.post("/load-model", summary="Load the model if it is not loaded (idempotent)", responses=ERRORS)
    async def load_model(wait: bool = Query(False, description="Answer only once loading has finished.")) -> JSONResponse:
        """Start loading unless the model is loaded or loading. Never loads a second copy."""
        if manager.ready:
            return JSONResponse({"status": "loaded", "started": False, "phase": manager.phase})
        started = manager.start_background_load()
        while wait and manager.phase in (LOADING, WARMING_UP):
            await asyncio.sleep(0.1)
        if manager.ready:
            return JSONResponse({"status": "loaded", "started": started, "phase": manager.phase})
        body = {"status": "loading" if manager.phase != "failed" else "failed", "started": started, "phase": manager.phase}
        if manager.error:
            body["error"] = manager.error
        return JSONResponse(body, status_code=202 if body["status"] == "loading" else 503)

    @router.post(
        "/generate",
        summary="Generate an image",
        response_model=GenerateResponse,
        responses={**ERRORS, 200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                                   "description": "JSON with a base64 image, or the raw image when Accept asks for image/*"}},
    )
    async def generate(body: GenerateRequest, request: Request):  # type: ignore[valid-type]
        """Generate one image. JSON with a base64 image by default; send `Accept: image/png` (or jpeg,
        webp) for the raw bytes, with the seed and timings in X-* headers. The request timeout covers
        the queue wait and the generation (504); a client that disconnects cancels its work."""
        arrived = time.perf_counter()
        raw = wants_raw(request.headers.get("accept"))
        job = manager.submit_generation(to_params(body), deadline=time.monotonic() + settings.request_timeout_s,
                                        request_id=request_id.get())
        result = await wait_for(manager, job, request)
        return await build_response(result, output_format(body, raw), bool(raw), settings, arrived, request_id.get())

    @router.post("/apply-lora", summary="Pin LoRAs for requests that name none", responses=ERRORS)
    async def apply_lora(body: ApplyLoraRequest) -> dict:
        """Replace the pinned LoRA set. It loads completely or nothing changes. Runs between generations."""
        return await asyncio.to_thread(manager.apply_loras, lora_specs(body.lora_refs()))

    @router.post("/remove-lora", summary="Unpin one LoRA, or all", responses=ERRORS)
    async def remove_lora(body: RemoveLoraRequest | None = Body(None)) -> dict:
        """With no body, unpin everything; with lora_name, that one. The base model comes back exactly."""
        return await asyncio.to_thread(manager.remove_loras, body.lora_name if body else None)

    @router.get("/lora-status", summary="Pinned and loaded LoRAs")
    async def lora_status() -> dict:
        """What is pinned (used by requests that name no LoRA) and which adapters are in memory."""
        return manager.lora_status()

    @router.get("/loras", summary="LoRAs in the LoRA folder, and those in memory")
    async def loras() -> dict:
        """Each .safetensors file in the LoRA folder with its size, rank and target modules."""
        return await asyncio.to_thread(manager.list_loras)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        """Requests by route and status, queue depth, wait and inference histograms, images, GPU memory."""
        return Response(metrics.render(), media_type=metrics.content_type)

    router.include_router(create_jobs_router(manager, settings, GenerateRequest))
    return router
