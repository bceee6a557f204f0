"""The one place that maps errors to HTTP, with one error body for all of them:

    {"error": {"type": "...", "message": "...", "code": 422, "request_id": "...", "details": ...}}
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

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
    E.CallbackNotAllowed: 422,
    E.JobNotFound: 404,
    E.ResultNotFound: 404,
    E.JobAlreadyEnded: 409,
    E.JobCancelled: 409,
    E.ShuttingDown: 503,
    E.ClientDisconnected: 499,  # nginx's "client closed request": only the access log and metrics see it
    E.BodyNotAccepted: 422,
    E.BodyTooLarge: 413,
    E.Unauthorized: 401,
    E.GenerationTimeout: 504,
}


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses=` for routes: the one error body, for each code the route can answer."""
    from ..schemas import ErrorBody

    return {code: {"model": ErrorBody} for code in codes}


def openai_error_responses(*codes: int) -> dict:
    """The same for the OpenAI-compatible routes, with OpenAI's error body."""
    from ..schemas import OpenAIErrorBody

    return {code: {"model": OpenAIErrorBody} for code in codes}


def status_of(exc: E.FluxAPIError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


OPENAI_PREFIX = "/v1/"  # routes that answer errors as OpenAI's API does


def error_response(code: int, type_: str, message: str, details=None, headers: dict | None = None,
                   path: str = "") -> JSONResponse:
    """The one error body; on the OpenAI-compatible routes (`path` under /v1/), OpenAI's."""
    if path.startswith(OPENAI_PREFIX):
        return openai_error_response(code, type_, message, details, headers)
    body = {"error": {"type": type_, "message": message, "code": code, "request_id": request_id.get(), "details": details}}
    return JSONResponse(body, status_code=code, headers=headers)


def openai_error_response(code: int, type_: str, message: str, details=None, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape and statuses: {"error": {"message", "type", "param", "code"}}; an invalid
    parameter is a 400 there (the official client raises BadRequestError), not a 422. `code` carries
    our own error type, `param` the field at fault."""
    status = 400 if code == 422 else code
    kind = ("server_error" if status >= 500 else "rate_limit_error" if status == 429
            else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": _param_of(details), "code": type_},
            "request_id": request_id.get()}
    return JSONResponse(body, status_code=status, headers=headers)


# Our field names on the OpenAI routes' own names.
_OPENAI_PARAM = {"num_images": "n", "width": "size", "height": "size"}


def _param_of(details) -> str | None:
    if isinstance(details, dict) and details.get("field"):
        field = details["field"]
    elif isinstance(details, list) and details:
        loc = [str(p) for p in details[0].get("loc", ()) if p not in ("body", "query", "path")]
        field = loc[0] if loc else None
    else:
        return None
    return _OPENAI_PARAM.get(field, field)


def allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document offers on this request's path (the spec is the contract)."""
    import re

    methods = set()
    for template, ops in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), request.url.path):
            methods |= {m.upper() for m in ops}
    return sorted(methods)


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
        retry_after = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if code >= 500:  # the service's own trouble: a failure or an out-of-memory is an error, the rest warnings
            level = logging.ERROR if code == 500 or isinstance(exc, E.GPUOutOfMemory) else logging.WARNING
            log.log(level, "%s %s -> %d %s: %s", request.method,
                    request.url.path[:512], code, exc.type, exc.message)
        return error_response(code, exc.type, exc.message, exc.details or None, headers, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errs]
        return error_response(422, "validation_error", _validation_message(errs), details, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, E.FluxAPIError):  # raised while FastAPI read the body (BodyTooLarge)
            return await _domain(request, exc.__cause__)
        if isinstance(exc.__cause__, ClientDisconnect):  # gone mid-body: nobody reads this; log and count 499
            return await _domain(request, E.ClientDisconnected("the client disconnected while sending the body"))
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI could not read the body at all (not UTF-8, say): as invalid as malformed JSON,
            # which FastAPI itself answers with 422, so the same status and body.
            msg = f"the body could not be read as JSON ({type(exc.__cause__).__name__}); send UTF-8 JSON"
            return error_response(422, "validation_error", msg,
                                  [{"loc": ["body"], "msg": msg, "type": "json_invalid"}], path=request.url.path)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names only the methods of the first route that matched the path; a path served
            # by several routes (GET and DELETE /jobs/{id}) allows all of theirs (and HEAD with GET).
            methods = allowed_methods(request) or [m.strip() for m in (headers or {}).get("Allow", "").split(",") if m.strip()]
            if "GET" in methods:
                methods = sorted({*methods, "HEAD"})
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=headers, path=request.url.path)

