"""The one place that maps errors to HTTP, with one error body for all of them:

    {"error": {"type": "...", "message": "...", "code": 422, "request_id": "...", "details": ...}}
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E
from ..logs import request_id

log = logging.getLogger(__name__)

STATUS: dict[type[E.FluxAPIError], int] = {
    E.ModelNotReady: 503,
    E.ModelSourceError: 503,
    E.BackendUnavailable: 503,
    E.GPUOutOfMemory: 503,
    E.QueueFull: 429,
    E.InvalidRequest: 422,
    E.InvalidLora: 422,
    E.LoraNotFound: 404,
    E.LoraNotAllowed: 403,
    E.LoraHubUnreachable: 503,
    E.GenerationFailed: 500,
    E.JobNotFound: 404,
    E.JobCancelled: 409,
    E.GenerationTimeout: 504,
}


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses=` for routes: the one error body, for each code the route can answer."""
    from ..schemas import ErrorBody

    return {code: {"model": ErrorBody} for code in codes}


def status_of(exc: E.FluxAPIError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(code: int, type_: str, message: str, details=None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "code": code, "request_id": request_id.get(), "details": details}}
    return JSONResponse(body, status_code=code, headers=headers)


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(E.FluxAPIError)
    async def _domain(request: Request, exc: E.FluxAPIError):
        code = status_of(exc)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, E.QueueFull) else None
        if code >= 500:
            log.error("%s %s -> %d %s: %s", request.method, request.url.path, code, exc.type, exc.message)
        return error_response(code, exc.type, exc.message, exc.details or None, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errs]
        return error_response(422, "validation_error", _validation_message(errs), details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")
