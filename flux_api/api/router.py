"""create_router: the one set of routes both services use.

(No `from __future__ import annotations` here: FastAPI must see the per-settings GenerateRequest
class itself, not a string naming it.)

Routes are thin: they turn the request into engine calls, queue GPU work on the manager's worker,
and turn the result into a response. They know nothing of torch.
"""


import asyncio
import base64
import secrets
import time

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response

from ..engine.base import LOADING, WARMING_UP, FluxModelManager, GenerationParams, GenerationResult
from ..engine.lora import LoraSpec
from ..imaging import FORMAT_OF_MEDIA_TYPE, MEDIA_TYPES, encode_image
from ..logs import request_id
from ..schemas import ApplyLoraRequest, ErrorBody, GenerateResponse, LoraRef, RemoveLoraRequest, build_generate_request
from ..settings import ServiceSettings

ERRORS = {code: {"model": ErrorBody} for code in (404, 422, 429, 500, 503)}


async def run_on_gpu(manager: FluxModelManager, fn, *args):
    """Queue `fn` on the manager's GPU worker and await it without blocking the event loop.

    If the client goes away while the job is still queued, awaiting is cancelled and the job is
    dropped unrun (asyncio propagates the cancel to the concurrent future).
    """
    return await asyncio.wrap_future(manager.submit(fn, *args))


def _specs(refs: list[LoraRef] | None) -> tuple[LoraSpec, ...] | None:
    return None if refs is None else tuple(LoraSpec(r.name, r.weight) for r in refs)


def _wants_raw(accept: str | None) -> str | None:
    """The raw image media type the Accept header asks for, if it asks for one over JSON."""
    if not accept:
        return None
    types = [t.split(";")[0].strip().lower() for t in accept.split(",")]
    if "application/json" in types:
        return None
    for t in types:
        if t in FORMAT_OF_MEDIA_TYPE or t == "image/*":
            return t
    return None


def _metadata(result: GenerationResult, service: str) -> dict:
    """What goes into the PNG text chunk: the deterministic parameters only, never timings."""
    p = result.params
    return {
        "service": service, "model": result.model, "backend": result.backend,
        "prompt": p.prompt, "negative_prompt": p.negative_prompt, "true_cfg_scale": p.true_cfg_scale,
        "seed": p.seed, "width": p.width, "height": p.height,
        "num_inference_steps": p.num_inference_steps, "guidance_scale": p.guidance_scale,
        "loras": [s.as_dict() for s in result.loras],
    }


def _warnings(truncation: dict) -> list[str]:
    out = []
    for enc, name in (("clip", "CLIP"), ("t5", "T5")):
        t = truncation[enc]
        if t["truncated"]:
            out.append(f"prompt is {t['tokens']} {name} tokens; {name} saw only the first {t['limit']}")
    return out


def create_router(manager: FluxModelManager, settings: ServiceSettings) -> APIRouter:
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
        webp) for the raw bytes, with the seed and timings in X-* headers."""
        arrived = time.perf_counter()
        raw = _wants_raw(request.headers.get("accept"))
        fmt = body.output_format
        if raw and raw != "image/*" and "output_format" not in body.model_fields_set:
            fmt = FORMAT_OF_MEDIA_TYPE[raw]
        params = GenerationParams(
            prompt=body.prompt, seed=body.seed if body.seed is not None else secrets.randbelow(2**32),
            width=body.width, height=body.height, num_inference_steps=body.num_inference_steps,
            guidance_scale=body.guidance_scale, negative_prompt=body.negative_prompt,
            true_cfg_scale=body.true_cfg_scale, loras=_specs(body.lora_refs()),
        )
        result: GenerationResult = await run_on_gpu(manager, manager.generate, params, time.perf_counter())

        t_enc = time.perf_counter()

        def _encode() -> tuple[bytes, str | None]:
            data = encode_image(result.image, fmt, _metadata(result, settings.service),
                                settings.png_compress_level, settings.jpeg_quality)
            return data, (None if raw else base64.b64encode(data).decode("ascii"))

        data, b64 = await asyncio.to_thread(_encode)  # encoding is CPU work: keep it off the event loop
        done = time.perf_counter()
        timings = {
            "queue_ms": result.queue_ms, "lora_ms": result.lora_ms, "inference_ms": result.inference_ms,
            "encode_ms": round((done - t_enc) * 1e3, 2), "total_ms": round((done - arrived) * 1e3, 2),
        }
        warnings = _warnings(result.truncation)
        if raw:
            headers = {
                "X-Seed": str(params.seed), "X-Width": str(params.width), "X-Height": str(params.height),
                "X-Backend": result.backend, "X-Prompt-Truncated": ",".join(
                    k for k in ("clip", "t5") if result.truncation[k]["truncated"]) or "none",
                **{f"X-Timing-{k.removesuffix('_ms').title()}-Ms": str(v) for k, v in timings.items()},
            }
            return Response(content=data, media_type=MEDIA_TYPES[fmt], headers=headers)
        return GenerateResponse(
            image=b64, format=fmt, seed=params.seed, width=params.width, height=params.height,
            num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
            negative_prompt=params.negative_prompt, true_cfg_scale=params.true_cfg_scale,
            model=result.model, backend=result.backend,
            loras=[LoraRef(name=s.name, weight=s.weight) for s in result.loras],
            prompt_truncation=result.truncation, warnings=warnings, timings=timings, request_id=request_id.get(),
        )

    @router.post("/apply-lora", summary="Pin LoRAs for requests that name none", responses=ERRORS)
    async def apply_lora(body: ApplyLoraRequest) -> dict:
        """Replace the pinned LoRA set. It loads completely or nothing changes. Runs between generations."""
        return await run_on_gpu(manager, manager.apply_loras, _specs(body.lora_refs()))

    @router.post("/remove-lora", summary="Unpin one LoRA, or all", responses=ERRORS)
    async def remove_lora(body: RemoveLoraRequest | None = Body(None)) -> dict:
        """With no body, unpin everything; with lora_name, that one. The base model comes back exactly."""
        return await run_on_gpu(manager, manager.remove_loras, body.lora_name if body else None)

    @router.get("/lora-status", summary="Pinned and loaded LoRAs")
    async def lora_status() -> dict:
        """What is pinned (used by requests that name no LoRA) and which adapters are in memory."""
        return manager.lora_status()

    @router.get("/loras", summary="LoRAs in the LoRA folder, and those in memory")
    async def loras() -> dict:
        """Each .safetensors file in the LoRA folder with its size, rank and target modules."""
        return await asyncio.to_thread(manager.list_loras)

    return router
