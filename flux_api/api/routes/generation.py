"""POST /generate: one image, waited for in the request."""

import time

from fastapi import APIRouter, Request

from ...limits import MEDIA_TYPES
from ...logs import request_id
from ...schemas import GenerateResponse
from ..deps import GENERATE_BODY, EngineDep, GenerateBody, SettingsDep
from ..errors import error_responses
from ..results import build_response, output_format, to_params, wait_for, wants_raw

router = APIRouter(tags=["generation"])


@router.post(
    "/generate",
    summary="Generate an image",
    response_model=GenerateResponse,
    responses={**error_responses(403, 404, 413, 422, 429, 500, 503, 504),
               200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                     "description": "JSON with a base64 image, or the raw image when Accept asks for image/*"}},
    openapi_extra=GENERATE_BODY,
)
async def generate(body: GenerateBody, request: Request, engine: EngineDep, settings: SettingsDep):
    """Generate one image. JSON with a base64 image by default; send `Accept: image/png` (or jpeg,
    webp) for the raw bytes, with the seed and timings in X-* headers. The request timeout covers
    the queue wait and the generation (504); a client that disconnects cancels its work."""
    arrived = time.perf_counter()
    raw = wants_raw(request.headers.get("accept"))
    job = await engine.submit(to_params(body), deadline=time.monotonic() + settings.request_timeout_s,
                              request_id=request_id.get())
    result = await wait_for(engine, job, request)
    return await build_response(result, output_format(body, raw), bool(raw), settings, arrived, request_id.get())
