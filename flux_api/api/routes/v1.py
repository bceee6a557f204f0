"""OpenAI-compatible images API: POST /v1/images/generations, POST /v1/images/edits (multipart, as the
official client sends it), and GET /v1/images/files/{token} for `response_format=url`.

The request is translated into the native /generate body and validated by it, so every rule and
default is the native one; OpenAI's own fields map onto ours: `n` -> num_images, `size` ("WxH" or
"auto") -> width/height, `quality` -> a preset (low: fast; medium/standard: balanced; high/hd:
quality; auto: none). Our own parameters (seed, steps, guidance, negative prompt, LoRAs, preset,
strength) are extra fields, which the official client sends through `extra_body`. Errors come in
OpenAI's shape and statuses (api/errors.py). `model` must name this service's model (the schema lists
the names; anything else is a 400); on a front that routes between services (Ray Serve), `flux-fp4` and
`flux-bf16` pick the service and the model id leaves it to `auto`; the X-Service header names the service
that drew the images. `user` is logged. Edits: no mask is image-to-image; with one it is inpainting, edited where the mask is fully
transparent (OpenAI's convention).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ...errors import InvalidRequest, ResultNotFound
from ...limits import MAX_IMAGES, MAX_SIDE, MEDIA_TYPES, MIN_SIDE, SIDE_STEP, OutputFormat, json_int
from ...logs import request_id
from ...schemas import LORA_RULES, STRICT, TRUE_CFG_RULE
from ...settings import ServiceSettings
from ..deps import EngineDep, SettingsDep
from ..errors import openai_error_responses
from ..links import public_base
from ..results import Inputs, check_inputs, encode_all, to_params, wait_for

log = logging.getLogger(__name__)
# Any route here may answer 400 (a bad parameter; FastAPI's 422 is a 400 on /v1), 413 (a body over
# max_body_bytes, on every path) and 500; the generation routes add their own, 409 for a request whose job
# was cancelled by DELETE /jobs/{id} (the job is listed under /jobs).
router = APIRouter(prefix="/v1/images", tags=["openai"], responses=openai_error_responses(400, 413, 500))
ERRORS = openai_error_responses(403, 404, 409, 429, 503, 504)

QUALITY_PRESET = {"low": "fast", "medium": "balanced", "standard": "balanced", "high": "quality", "hd": "quality",
                  "auto": None}
# Our fields a client may send as extras (extra_body); the others have OpenAI names here.
EXTRAS = ("negative_prompt", "true_cfg_scale", "num_inference_steps", "guidance_scale", "seed", "lora_name",
          "lora_weight", "loras", "preset", "first_block_cache")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str = Field(description="The prompt as used (never rewritten here).")
    seed: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str
    quality: str
    background: str = "opaque"


def build_openai_requests(native: type[BaseModel], settings: ServiceSettings) -> dict[str, type[BaseModel]]:
    """The /v1 request models, from the service's native model: OpenAI's fields plus our extras,
    each extra with the native field's own type, limits and description."""
    own = {
        "prompt": (str, native.model_fields["prompt"]),
        "n": (json_int(ge=1, le=MAX_IMAGES), Field(1, description=f"Images, 1-{MAX_IMAGES} (seeds seed, seed+1, ...).")),
        "size": (str, Field("auto", pattern=SIZE_PATTERN,
                            description=f"WxH, each side {MIN_SIDE}-{MAX_SIDE} in steps of {SIDE_STEP}, or auto (the "
                            "default size; for an edit, the image's own).")),
        "response_format": (Literal["b64_json", "url"], Field("b64_json", description="url: a link served here, "
                                                               "kept as long as finished jobs are.")),
        "output_format": (OutputFormat, Field(settings.output_format)),
        "output_compression": (json_int(ge=0, le=100) | None, Field(None, description="0-100: JPEG/WebP quality; "
                                                                      "for PNG, the zlib effort.")),
        "quality": (Literal[tuple(QUALITY_PRESET)], Field("auto", description="low: the fast preset; medium/standard: "
                                                          "balanced; high/hd: quality; auto: the defaults.")),
        "model": (Literal[tuple(sorted(_allowed_models(settings, _routes(native))))] | None,
                  Field(None, description="This service's model id, or flux-fp4/flux-bf16 (where the front routes "
                        "between them, these pick the service; the model id: auto); anything else is refused.")),
        "user": (str | None, Field(None, max_length=256, description="Logged with the request.")),
        # OpenAI's gpt-image models take it; FLUX draws no alpha, so transparent is refused rather than ignored
        "background": (Literal["auto", "opaque"], Field("auto", description="auto or opaque: an opaque image, as "
                                                        "every image here is (transparent is not drawn).")),
        **{name: (native.model_fields[name].annotation, native.model_fields[name]) for name in EXTRAS},
    }
    config = ConfigDict(**STRICT, json_schema_extra={**LORA_RULES, "allOf": [TRUE_CFG_RULE]})
    generations = create_model("ImagesGenerateRequest", __config__=config, **own)
    edits = create_model("ImagesEditRequest", __config__=config, **own,
                         strength=(native.model_fields["strength"].annotation, native.model_fields["strength"]))
    return {"generations": generations, "edits": edits}


# Every size the service draws, spelled out from the limits, so the schema says exactly what is valid.
_SIDES = "|".join(str(v) for v in range(MIN_SIDE, MAX_SIDE + 1, SIDE_STEP))
SIZE_PATTERN = rf"^(auto|({_SIDES})x({_SIDES}))$"


def _validate(model: type[BaseModel], raw: Any, strict: bool = True) -> BaseModel:
    try:
        return model.model_validate(raw, strict=strict)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]) from None


def _routes(native: type[BaseModel]) -> tuple[str, ...]:
    """The services a front routes between (the native body's `service` choices, less auto); () on a plain service."""
    field = native.model_fields.get("service")
    return tuple(c for c in get_args(field.annotation) if c != "auto") if field is not None else ()


def _allowed_models(settings: ServiceSettings, routes: tuple[str, ...] = ()) -> set[str]:
    services = routes or (settings.service,)
    return {settings.model, settings.model.rstrip("/").rsplit("/", 1)[-1], *(f"flux-{s}" for s in services)}


def to_native(req: BaseModel, request: Request, edit: bool) -> BaseModel:
    """The native /generate body for an OpenAI request (validated there: every native rule applies)."""
    if req.user is not None:
        log.info("images request for user %s", req.user)
    preset = QUALITY_PRESET[req.quality]  # an explicit preset wins over the one quality names
    native = {name: getattr(req, name) for name in EXTRAS if name in req.model_fields_set}  # only what was given
    native.update(prompt=req.prompt, num_images=req.n, output_format=req.output_format)
    if preset is not None and "preset" not in native:
        native["preset"] = preset
    if req.size != "auto":
        native["width"], native["height"] = (int(v) for v in req.size.split("x"))
    routes = _routes(request.app.state.generate_request)
    if routes:  # a front routing between services: flux-fp4 / flux-bf16 name one; the model id, auto
        native["service"] = next((s for s in routes if req.model == f"flux-{s}"), "auto")
    if edit:
        native["image"] = "upload"  # the uploaded bytes are checked apart; this makes the native rules see one
        if getattr(req, "strength", None) is not None:
            native["strength"] = req.strength
    return _validate(request.app.state.generate_request, native)


async def _run(request: Request, response: Response, req: BaseModel, body: BaseModel, inputs, engine,
               settings) -> dict:
    """Queue, wait (a client that leaves cancels it), encode, answer in OpenAI's shape."""
    params = to_params(body, inputs)
    job = await engine.submit(params, deadline=time.monotonic() + settings.request_timeout_s, request_id=request_id.get())
    result = await wait_for(engine, job, request)
    response.headers["X-Service"] = result.service or settings.service  # reproducing an image means naming it
    # output_compression: JPEG/WebP quality, or PNG's zlib effort (0-100 onto zlib's 0-9)
    c, png = req.output_compression, req.output_format == "png"
    datas = await asyncio.to_thread(encode_all, result, req.output_format, settings,
                                    None if c is None or png else c, round(c * 9 / 100) if c is not None and png else None)
    result.images = []
    data = []
    for payload, seed in zip(datas, params.seeds()):
        item = {"revised_prompt": params.prompt, "seed": seed}
        if req.response_format == "url":
            item["url"] = request.app.state.result_links.url(payload, MEDIA_TYPES[req.output_format],
                                                             public_base(request, settings))
        else:
            item["b64_json"] = base64.b64encode(payload).decode("ascii")
        data.append(item)
    return {"created": int(time.time()), "data": data, "output_format": req.output_format,
            "size": f"{params.width}x{params.height}", "quality": req.quality}


@router.post("/generations", summary="Create images (OpenAI-compatible)", response_model=ImagesResponse,
             response_model_exclude_none=True, responses=ERRORS, openapi_extra={"x-body-model": "ImagesGenerateRequest"})
async def generations(raw: Annotated[Any, Body()], request: Request, response: Response, engine: EngineDep,
                      settings: SettingsDep) -> dict:
    """OpenAI's images.generate: prompt, n, size, response_format, output_format, output_compression,
    quality, model, user; plus this service's parameters as extra fields."""
    req = _validate(request.app.state.openai_requests["generations"], raw)
    return await _run(request, response, req, to_native(req, request, edit=False), Inputs(), engine, settings)


TEXT_FIELDS = ("prompt", "negative_prompt", "user", "lora_name")
# The openai package's multipart encoding of a list of objects (extra_body={"loras": [{...}, ...]}): one part
# per key and LoRA, loras[][name] and loras[][weight], grouped by key (every name, then every weight).
LORA_PART = re.compile(r"loras\[\]\[(\w+)\]")


def _loras_from_parts(parts: dict[str, list[str]]) -> list[dict[str, str]]:
    """The LoRAs of loras[][key] parts: the i-th value of each key belong together. Only when every LoRA
    gives every key can they be matched up; otherwise the parts do not say which weight is whose."""
    counts = {key: len(values) for key, values in parts.items()}
    if len(set(counts.values())) != 1:
        raise InvalidRequest(f"loras[][key] parts must give every key for every LoRA (got {counts}): which value "
                             "belongs to which LoRA is not known; send loras as one JSON field instead, "
                             'loras=[{"name": ..., "weight": ...}]', field="loras")
    return [{key: values[i] for key, values in parts.items()} for i in range(next(iter(counts.values())))]


async def _form(request: Request, settings: ServiceSettings, model: type[BaseModel]) -> tuple[dict, bytes | None, bytes | None]:
    """The multipart form: its fields as the schema's types (multipart sends everything as text; lists as
    name[]), and the image and mask bytes. A field sent twice is refused (which value was meant?)."""
    nullable = {name for name, f in model.model_fields.items() if f.default is None}
    form = await request.form(max_files=3, max_fields=64, max_part_size=settings.max_image_bytes + 1)
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    lora_parts: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        name = key.removesuffix("[]")
        if hasattr(value, "read"):
            if name in files:
                raise InvalidRequest(f"one {name} per edit: several were sent", field=name)
            files[name] = await value.read()
            continue
        if part := LORA_PART.fullmatch(key):
            lora_parts.setdefault(part[1], []).append(value)
            continue
        if name in fields and name != "loras":
            raise InvalidRequest(f"{name} was sent more than once; send each field once", field=name)
        if value in ("", "null") and name in nullable and name not in TEXT_FIELDS:
            continue  # a form has no null: an empty or "null" value of a field that may be null is none
        if name in ("loras",):
            # One part holding the JSON list, or (OpenAPI's multipart encoding of an array, as generated
            # clients send it) one part per item, each a JSON object: either way, every part counts.
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidRequest("loras in a form is JSON: [{\"name\": ..., \"weight\": ...}], or one "
                                     "{\"name\": ..., \"weight\": ...} per part", field="loras") from None
            fields.setdefault(name, []).extend(value if isinstance(value, list) else [value])
            continue
        fields[name] = value
    if lora_parts:
        fields.setdefault("loras", []).extend(_loras_from_parts(lora_parts))
    for name in ("image", "mask"):
        if name in fields:
            raise InvalidRequest(f"{name} must be a file upload, not a text field", field=name)
    if "image" not in files:
        raise InvalidRequest("an edit needs an image (a file field named image)", field="image")
    unknown = set(files) - {"image", "mask"}
    if unknown:
        raise InvalidRequest(f"unknown file field(s): {sorted(unknown)}", field=sorted(unknown)[0])
    return fields, files["image"], files.get("mask")


@router.post("/edits", summary="Edit an image (OpenAI-compatible): image-to-image, or inpainting with a mask",
             response_model=ImagesResponse, response_model_exclude_none=True, responses=ERRORS,
             openapi_extra={"x-body-model": "ImagesEditRequest", "x-body-multipart": ["image", "mask"]})
async def edits(request: Request, response: Response, engine: EngineDep, settings: SettingsDep) -> dict:
    """OpenAI's images.edit, multipart: `image` (PNG/JPEG/WebP), optional `mask` (a PNG whose fully
    transparent pixels are edited), prompt, n, size (auto: the image's), response_format, ...; plus
    this service's parameters (strength, seed, steps, ...)."""
    model = request.app.state.openai_requests["edits"]
    fields, image, mask = await _form(request, settings, model)
    req = _validate(model, fields, strict=False)  # text fields: converted by the schema
    body = to_native(req, request, edit=True)
    inputs = await asyncio.to_thread(check_inputs, body, settings, image, mask, "alpha")
    return await _run(request, response, req, body, inputs, engine, settings)


@router.get("/files/{token}", summary="An image made with response_format=url",
            responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}, **openai_error_responses(404)})
async def file(token: str, request: Request) -> Response:
    """The image bytes, while the link lives (as long as finished jobs are kept); then 404."""
    found = request.app.state.result_links.get(token)
    if found is None:
        raise ResultNotFound("no such image link, or it has expired (links live as long as finished jobs)")
    return Response(content=found[0], media_type=found[1])
