"""What a route may ask for, as `Annotated` dependencies (the full-stack-fastapi-template's deps.py).

Everything comes from `app.state`, set once by create_app: the engine (an EngineClient), the
settings, and the /generate body model built from those settings.
"""

from typing import Annotated, Any

from fastapi import Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ..engine.client import EngineClient
from ..errors import BodyNotAccepted, CallbackNotAllowed, InvalidRequest
from ..metrics import Metrics
from ..settings import ServiceSettings
from .webhooks import Webhooks


# async: none of them blocks, and a sync dependency would cost each request a hop to a worker thread.
async def get_engine(request: Request) -> EngineClient:
    return request.app.state.engine


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def generate_body(raw: Annotated[Any, Body()], request: Request) -> BaseModel:
    """The /generate body, validated against this service's model (its configured defaults and limits).
    FastAPI parses the JSON; errors come out as FastAPI's own would for a body of that model (at
    `body.<field>`; from_attributes as FastAPI validates). The OpenAPI document shows the model itself
    (api/openapi.py)."""
    callback = sorted(CALLBACK_FIELDS & set(raw)) if isinstance(raw, dict) else []
    if callback:  # not merely "extra inputs are not permitted": say where it belongs
        msg = f"{callback[0]} is taken by POST /jobs, which answers at once and calls back; /generate answers with the image"
        raise RequestValidationError([{"loc": ("body", callback[0]), "msg": msg, "type": "extra_forbidden"}])
    return _validate(request.app.state.generate_request, raw)


async def job_body(raw: Annotated[Any, Body()], request: Request) -> BaseModel:
    """The POST /jobs body: the /generate body, plus callback_url/callback_images where webhooks are on.
    Where they are off (no webhook_secret), a callback_url is refused saying so: never sent unsigned."""
    if isinstance(raw, dict) and request.app.state.settings.webhook_secret is None and CALLBACK_FIELDS & set(raw):
        raise CallbackNotAllowed("webhooks are off on this service (no webhook_secret is set), so a callback could not "
                                 "be signed; follow the job with GET /jobs/{id} or its events instead",
                                 field=sorted(CALLBACK_FIELDS & set(raw))[0])
    return _validate(request.app.state.job_request, raw)


def _validate(model: type[BaseModel], raw: Any) -> BaseModel:
    try:
        return model.model_validate(raw, from_attributes=True)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]) from None


async def reject_unexpected_input(request: Request) -> None:
    """On every route: nothing a client sends is silently ignored. A query parameter the route does not
    take (`POST /remove-lora?lora_name=x` would unpin every LoRA) and a body sent to a route that takes
    none (`POST /load-model {"wait": true}` would look like it waited) are 422s naming what it takes."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    # What the route takes in its query string, as its OpenAPI entry (the contract) says.
    op = request.app.openapi()["paths"].get(route.path, {}).get(request.method.lower(), {})
    taken = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
    unknown = sorted(set(request.query_params) - set(taken))
    if unknown:
        takes = f"it takes {', '.join(taken)}" if taken else "it takes none"
        raise InvalidRequest(f"unknown query parameter(s) {', '.join(unknown)} for {route.path}: {takes}",
                             field=unknown[0])
    if route.body_field is not None or "x-body-model" in (route.openapi_extra or {}):
        return  # it takes a body (one it reads itself, where it declares x-body-model)
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "")
    if (length is not None and length != "0") or (chunked and await request.body()):  # an empty chunked body is none
        hint = f"; its parameters go in the query string ({', '.join(taken)})" if taken else ""
        raise BodyNotAccepted(f"{request.method} {route.path} takes no request body{hint}")


async def get_webhooks(request: Request) -> Webhooks:
    return request.app.state.webhooks


CALLBACK_FIELDS = {"callback_url", "callback_images"}
EngineDep = Annotated[EngineClient, Depends(get_engine)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
GenerateBody = Annotated[BaseModel, Depends(generate_body)]
JobBody = Annotated[BaseModel, Depends(job_body)]
WebhooksDep = Annotated[Webhooks, Depends(get_webhooks)]

# Routes whose body is the service's GenerateRequest say so; api/openapi.py puts its schema there.
GENERATE_BODY = {"x-body-model": "GenerateRequest"}
JOB_BODY = {"x-body-model": "JobRequest"}  # GenerateRequest, plus the callback where webhooks are on
