"""POST /generate: one image, waited for in the request."""

import time

from fastapi import APIRouter, Request

from ...errors import InvalidRequest
from ...limits import MEDIA_TYPES
from ...logs import request_id
from ...schemas import GenerateResponse
from ..deps import GENERATE_BODY, EngineDep, GenerateBody, SettingsDep
from ..errors import error_responses
from ..results import build_response, output_format, params_of, wait_for, wants_raw

router = APIRouter(tags=["generation"])


@router.post(
    "/generate",
    summary="Generate an image",
    response_model=GenerateResponse,
    responses={**error_responses(403, 404, 409, 429, 503, 504),  # 409: cancelled by DELETE /jobs/{id}
               200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                     "description": "JSON with a base64 image, or the raw image when Accept asks for image/*"}},
    openapi_extra=GENERATE_BODY,
)
async def generate(body: GenerateBody, request: Request, engine: EngineDep, settings: SettingsDep):
    """Generate an image (or num_images of them; from an init image and mask too). JSON with base64
    images by default; send `Accept: image/png` (or jpeg, webp) for the raw bytes of one image, with
    the seed and timings in X-* headers. The request timeout covers
    the queue wait and the generation (504); a client that disconnects cancels its work."""
    arrived = time.perf_counter()
    raw = wants_raw(request.headers.get("accept"))
    if raw and body.num_images > 1:
        raise InvalidRequest("raw image bytes carry one image: ask for JSON (Accept: application/json) for "
                             "num_images > 1", field="num_images")
    params, inputs = await params_of(body, settings)
    job = await engine.submit(params, deadline=time.monotonic() + settings.request_timeout_s,
                              request_id=request_id.get())
    result = await wait_for(engine, job, request)
    return await build_response(result, output_format(body, raw), bool(raw), settings, arrived, request_id.get(),
                                inputs.notes)


@router.get("/presets", summary="The named parameter sets usable as `preset`")
async def presets(settings: SettingsDep) -> dict:
    """Each preset's description and the fields it sets; a field a request gives wins over its preset.
    On /v1, `quality` picks one: low: fast; medium/standard: balanced; high/hd: quality."""
    return {"presets": {name: {"description": p.description, "fields": p.fields()} for name, p in settings.presets.items()}}
