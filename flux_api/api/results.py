"""What /generate and /jobs share: turning a request into GenerationParams, waiting for a job
(with the client's disconnect and the deadline), and turning a result into a response."""

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from ..engine.client import EngineClient
from ..engine.lora import LoraSpec
from ..engine.scheduler import Job
from ..engine.types import GenerationParams, GenerationResult
from ..errors import ClientDisconnected, GenerationTimeout, InvalidRequest
from ..imaging import encode_image
from ..limits import FORMAT_OF_MEDIA_TYPE, MAX_SEED, MAX_SIDE, MEDIA_TYPES, MIN_SIDE, SIDE_STEP, valid_side
from ..uploads import decode_base64_image, read_init_image, read_mask
from ..schemas import GenerateResponse, LoraRef
from ..settings import ServiceSettings

# How long past its deadline a job may take to stop: the worker checks at step boundaries, and the
# step in flight (and the VAE) must finish first.
STOP_GRACE_S = 10.0


def lora_specs(refs: list[LoraRef] | None) -> tuple[LoraSpec, ...] | None:
    return None if refs is None else tuple(LoraSpec(r.name, r.weight) for r in refs)


@dataclass(frozen=True)
class Inputs:
    """A request's checked images (none for text-to-image) and what converting them changed."""

    image: Any = None
    mask: Any = None
    notes: tuple[str, ...] = ()


def read_inputs(body, settings: ServiceSettings, mask_convention: str = "white") -> Inputs:
    """Decode and check the init image and mask of `body` (blocking: run it off the event loop). The
    output size is the image's when the request gave none, else it must be the image's: nothing is
    silently resized. InvalidImage / InvalidRequest (422) on any problem, before anything queues."""
    image_data, mask_data = _raw(body.image, "image", settings), _raw(body.mask, "mask", settings)
    return check_inputs(body, settings, image_data, mask_data, mask_convention)


def _raw(value, field: str, settings: ServiceSettings) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return decode_base64_image(value, field, settings.max_image_bytes)


def check_inputs(body, settings: ServiceSettings, image_data: bytes | None, mask_data: bytes | None,
                 mask_convention: str) -> Inputs:
    if image_data is None:
        return Inputs()
    image = read_init_image(image_data, "image", settings.max_image_bytes, settings.max_image_pixels)
    size = image.image.size
    given = {"width", "height"} & body.model_fields_set
    if given and (body.width, body.height) != size:
        raise InvalidRequest(f"the image is {size[0]}x{size[1]} but the request asks for {body.width}x{body.height}: "
                             "nothing is resized; send an image of that size, or give no width/height to use its own",
                             field="image")
    if not given:
        w, h = size
        if not (valid_side(w) and valid_side(h)):
            raise InvalidRequest(f"the image is {w}x{h}; its sides must be {MIN_SIDE}-{MAX_SIDE}, multiples of "
                                 f"{SIDE_STEP} (nothing is resized)", field="image")
        body.width, body.height = w, h
    mask = None
    if mask_data is not None:
        mask = read_mask(mask_data, "mask", size, mask_convention, settings.max_image_bytes, settings.max_image_pixels)
    return Inputs(image.image, mask.image if mask else None, image.notes + (mask.notes if mask else ()))


def to_params(body, inputs: Inputs = Inputs()) -> GenerationParams:
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 2 - body.num_images)
    return GenerationParams(
        prompt=body.prompt, seed=seed,
        width=body.width, height=body.height, num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale, negative_prompt=body.negative_prompt,
        true_cfg_scale=body.true_cfg_scale,
        loras=lora_specs(body.lora_refs()),
        num_images=body.num_images, init_image=inputs.image, mask_image=inputs.mask,
        strength=body.strength if inputs.image is not None else None,
        service=getattr(body, "service", None),  # only a routing front's body has it (Ray Serve)
        first_block_cache=body.first_block_cache,
    )


async def params_of(body, settings: ServiceSettings) -> tuple[GenerationParams, Inputs]:
    """GenerationParams of a native request, its images decoded and checked off the event loop."""
    inputs = await asyncio.to_thread(read_inputs, body, settings) if body.image is not None else Inputs()
    return to_params(body, inputs), inputs


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


def _metadata(result: GenerationResult, service: str, seed: int) -> dict:
    """What goes into the PNG text chunk: the deterministic parameters only, never timings. An image of
    several says its own seed, so that it is the same bytes as that seed's request alone."""
    p = result.params
    extra = {"mode": p.kind, "strength": p.strength} if p.init_image is not None else {}
    if p.first_block_cache is not None:  # only where set: an image without it keeps its bytes
        extra["first_block_cache"] = p.first_block_cache
    return {
        "service": service, "model": result.model, "backend": result.backend,
        "prompt": p.prompt, "negative_prompt": p.negative_prompt, "true_cfg_scale": p.true_cfg_scale,
        "seed": seed, "width": p.width, "height": p.height, **extra,
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


def encode_all(result: GenerationResult, fmt: str, settings: ServiceSettings, quality: int | None = None,
               png_level: int | None = None) -> list[bytes]:
    """Every image of `result` as `fmt` bytes (blocking); `quality` and `png_level` override the settings'."""
    return [encode_image(img, fmt, _metadata(result, result.service or settings.service, seed),
                         settings.png_compress_level if png_level is None else png_level,
                         settings.jpeg_quality if quality is None else quality)
            for img, seed in zip(result.images, result.params.seeds())]


async def build_response(result: GenerationResult, fmt: str, raw: bool, settings: ServiceSettings,
                         arrived: float, request_id: str, notes: tuple[str, ...] = ()):
    """Encode the images off the event loop (overlapping the next generation), then the response."""
    t_enc = time.perf_counter()

    def _encode() -> tuple[list[bytes], list[str] | None]:
        data = encode_all(result, fmt, settings)
        return data, (None if raw else [base64.b64encode(d).decode("ascii") for d in data])

    datas, b64s = await asyncio.to_thread(_encode)
    result.images = []  # finished jobs are kept for a while: keep them light (the bytes go out now)
    done = time.perf_counter()
    timings = {"queue_ms": result.queue_ms, "lora_ms": result.lora_ms, "inference_ms": result.inference_ms,
               "encode_ms": round((done - t_enc) * 1e3, 2), "total_ms": round((done - arrived) * 1e3, 2)}
    p = result.params
    if raw:
        truncated = ",".join(k for k in ("clip", "t5") if result.truncation[k]["truncated"]) or "none"
        headers = {"X-Seed": str(p.seed), "X-Width": str(p.width), "X-Height": str(p.height),
                   "X-Backend": result.backend, "X-Service": result.service or settings.service,
                   "X-Prompt-Truncated": truncated,
                   **({"X-Steps-Skipped": str(result.steps_skipped)} if result.steps_skipped is not None else {}),
                   **{f"X-Timing-{k.removesuffix('_ms').title()}-Ms": str(v) for k, v in timings.items()}}
        return Response(content=datas[0], media_type=MEDIA_TYPES[fmt], headers=headers)
    return GenerateResponse(
        image=b64s[0], format=fmt, seed=p.seed, images=b64s if len(b64s) > 1 else None, seeds=p.seeds(),
        width=p.width, height=p.height,
        num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale,
        negative_prompt=p.negative_prompt, true_cfg_scale=p.true_cfg_scale,
        first_block_cache=p.first_block_cache, steps_skipped=result.steps_skipped,
        model=result.model, backend=result.backend, service=result.service or settings.service,
        loras=[LoraRef(name=s.name, weight=s.weight) for s in result.loras],
        prompt_truncation=result.truncation, warnings=[*notes, *_warnings(result.truncation)], timings=timings,
        request_id=request_id,
    )


def output_format(body, raw: str | None) -> str:
    if raw and raw != "image/*" and "output_format" not in body.model_fields_set:
        return FORMAT_OF_MEDIA_TYPE[raw]
    return body.output_format
