"""What a route may ask for, as `Annotated` dependencies (the full-stack-fastapi-template's deps.py).

Everything comes from `app.state`, set once by create_app: the engine (an EngineClient), the
settings, and the /generate body model built from those settings.
"""

from typing import Annotated, Any

from fastapi import Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ..engine.client import EngineClient
from ..errors import BodyNotAccepted
from ..metrics import Metrics
from ..settings import ServiceSettings


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
    try:
        return request.app.state.generate_request.model_validate(raw, from_attributes=True)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]) from None


async def reject_unexpected_body(request: Request) -> None:
    """On every route: a body sent to a route that takes none is a 422, never silently ignored
    (`POST /load-model {"wait": true}` would otherwise look like it waited)."""
    route = request.scope.get("route")
    if getattr(route, "body_field", True) is not None or "x-body-model" in (getattr(route, "openapi_extra", None) or {}):
        return  # it takes a body (one it reads itself, where it declares x-body-model)
    length = request.headers.get("content-length")
    if (length is not None and length != "0") or "chunked" in request.headers.get("transfer-encoding", ""):
        params = [p.name for p in getattr(route, "dependant").query_params] if route is not None else []
        hint = f"; its parameters go in the query string ({', '.join(params)})" if params else ""
        raise BodyNotAccepted(f"{request.method} {route.path} takes no request body{hint}")


EngineDep = Annotated[EngineClient, Depends(get_engine)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
GenerateBody = Annotated[BaseModel, Depends(generate_body)]

# Routes whose body is the service's GenerateRequest say so; api/openapi.py puts its schema there.
GENERATE_BODY = {"x-body-model": "GenerateRequest"}
