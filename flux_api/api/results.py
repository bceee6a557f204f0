"""What /generate and /jobs share: turning a request into GenerationParams, waiting for a job
(with the client's disconnect and the deadline), and turning a result into a response."""

import asyncio
import base64
import secrets
import time

from fastapi import Request
from fastapi.responses import Response

from ..engine.client import EngineClient
from ..engine.lora import LoraSpec
from ..engine.scheduler import Job
from ..engine.types import GenerationParams, GenerationResult
from ..errors import ClientDisconnected, GenerationTimeout
from ..imaging import encode_image
from ..limits import FORMAT_OF_MEDIA_TYPE, MEDIA_TYPES
from ..schemas import GenerateResponse, LoraRef
from ..settings import ServiceSettings

# How long past its deadline a job may take to stop: the worker checks at step boundaries, and the
# step in flight (and the VAE) must finish first.
STOP_GRACE_S = 10.0


def lora_specs(refs: list[LoraRef] | None) -> tuple[LoraSpec, ...] | None:
    return None if refs is None else tuple(LoraSpec(r.name, r.weight) for r in refs)


def to_params(body) -> GenerationParams:
    return GenerationParams(
        prompt=body.prompt, seed=body.seed if body.seed is not None else secrets.randbelow(2**32),
        width=body.width, height=body.height, num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale, negative_prompt=body.negative_prompt,
        true_cfg_scale=body.true_cfg_scale,
        loras=lora_specs(body.lora_refs()),
    )


def wants_raw(accept: str | None) -> str | None:
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


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for(engine: EngineClient, job: Job, request: Request) -> GenerationResult:
    """The job's result. A client that goes away cancels it (queued: dropped; running: stopped at the
    next step); past its deadline it is stopped and this raises GenerationTimeout."""
    result = asyncio.wrap_future(job.future)
    # Whoever stops waiting, the job's own end is still seen here: an error nobody retrieves would be
    # logged by asyncio later ("Future exception was never retrieved"), under another request's id.
    result.add_done_callback(lambda f: f.cancelled() or f.exception())
    gone = asyncio.ensure_future(_disconnected(request))
    timeout = None if job.deadline is None else max(0.0, job.deadline - time.monotonic()) + STOP_GRACE_S
    try:
        done, _ = await asyncio.wait({result, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if result in done:
            return result.result()
        if gone in done:
            error = ClientDisconnected("the client disconnected; its job was cancelled")
        else:
            error = GenerationTimeout("the request timed out (queue wait plus generation) and was stopped")
        engine.cancel(job, str(error), error)
        raise error
    finally:
        gone.cancel()


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


async def build_response(result: GenerationResult, fmt: str, raw: bool, settings: ServiceSettings,
                         arrived: float, request_id: str):
    """Encode the image off the event loop (overlapping the next generation), then the response."""
    t_enc = time.perf_counter()

    def _encode() -> tuple[bytes, str | None]:
        data = encode_image(result.image, fmt, _metadata(result, settings.service),
                            settings.png_compress_level, settings.jpeg_quality)
        return data, (None if raw else base64.b64encode(data).decode("ascii"))

    data, b64 = await asyncio.to_thread(_encode)
    result.image = None  # finished jobs are kept for a while: keep them light (the bytes go out now)
    done = time.perf_counter()
    timings = {"queue_ms": result.queue_ms, "lora_ms": result.lora_ms, "inference_ms": result.inference_ms,
               "encode_ms": round((done - t_enc) * 1e3, 2), "total_ms": round((done - arrived) * 1e3, 2)}
    p = result.params
    if raw:
        truncated = ",".join(k for k in ("clip", "t5") if result.truncation[k]["truncated"]) or "none"
        headers = {"X-Seed": str(p.seed), "X-Width": str(p.width), "X-Height": str(p.height),
                   "X-Backend": result.backend, "X-Prompt-Truncated": truncated,
                   **{f"X-Timing-{k.removesuffix('_ms').title()}-Ms": str(v) for k, v in timings.items()}}
        return Response(content=data, media_type=MEDIA_TYPES[fmt], headers=headers)
    return GenerateResponse(
        image=b64, format=fmt, seed=p.seed, width=p.width, height=p.height,
        num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale,
        negative_prompt=p.negative_prompt, true_cfg_scale=p.true_cfg_scale,
        model=result.model, backend=result.backend,
        loras=[LoraRef(name=s.name, weight=s.weight) for s in result.loras],
        prompt_truncation=result.truncation, warnings=_warnings(result.truncation), timings=timings,
        request_id=request_id,
    )


def output_format(body, raw: str | None) -> str:
    if raw and raw != "image/*" and "output_format" not in body.model_fields_set:
        return FORMAT_OF_MEDIA_TYPE[raw]
    return body.output_format
