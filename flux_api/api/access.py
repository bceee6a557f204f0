"""Who may call what: API keys (the `api_keys` setting), the open paths, and CORS (`cors_origins`).

Keys are checked by a pure ASGI middleware, not by a FastAPI dependency, because it answers before
anything else looks at the request:
- before the body is read, so a client without a key never learns how its body would have been judged
  (FastAPI parses a route's body before its dependencies run: a bad JSON body would be a 422, not a 401);
- on every path, so an unknown path or a method a path lacks is a 401 too (not a 404/405 that maps the
  routes out), and the SSE stream is refused before it starts;
- with one rule (`AccessRule`) that both the middleware and the OpenAPI document use: an operation is
  documented as needing the key (its `security` and its 401) exactly when the middleware asks for it.

A key is compared with every configured key, each through hmac.compare_digest on SHA-256 digests (equal
lengths: neither the key's length nor which key matched shows in the time taken), with no early exit.
A key is never logged, echoed or shown: the 401 says whether it was missing or invalid, nothing more.

With no key configured there is no middleware and the document has no security scheme; with no CORS
origin configured there is no CORS middleware (no Access-Control-* header on any answer).
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.middleware.cors import CORSMiddleware

from ..errors import Unauthorized
from ..settings import ServiceSettings
from .errors import OPENAI_PREFIX, error_response, status_of
from .links import LINK_PREFIX

SCHEME = "APIKey"  # the OpenAPI security scheme's name (Swagger UI's "Authorize" dialog shows it)
OPEN_METHODS = ("GET", "HEAD", "OPTIONS")  # an open path is open to reading only
MISSING = "missing API key: send the header `Authorization: Bearer <key>`"
INVALID = "invalid API key: it is not one of this service's keys"
NOT_BEARER = "invalid Authorization header: send `Authorization: Bearer <key>`"

# Headers a browser page may read from an answer (CORS hides all but a few unless named here).
EXPOSED_HEADERS = ["X-Request-ID", "X-Request-ID-Replaced", "Retry-After", "Location", "X-Seed", "X-Width",
                   "X-Height", "X-Backend", "X-Service", "X-Prompt-Truncated", "X-Steps-Skipped", "X-Timing-Queue-Ms", "X-Timing-Lora-Ms",
                   "X-Timing-Inference-Ms", "X-Timing-Encode-Ms", "X-Timing-Total-Ms"]


class AccessRule:
    """Which requests need no key: reading the health checks, the API docs (Swagger UI and its OAuth2
    redirect, ReDoc, the OpenAPI document), the web page under /ui, result links (their token is the
    secret, so an <img> can show them), and /metrics when `metrics_open`. Everything else needs one.
    Works on request paths and on the OpenAPI document's path templates alike."""

    def __init__(self, app: FastAPI, metrics_open: bool):
        # The docs' paths are fixed, not read from app.docs_url/redoc_url: the pages may be served by
        # routes of their own (self-hosted assets under /docs/...), with FastAPI's turned off (None).
        docs = {"/docs", "/redoc", app.openapi_url, app.swagger_ui_oauth2_redirect_url} - {None}
        self.exact = docs | {"/health", "/health/live", "/ui"} | ({"/metrics"} if metrics_open else set())
        self.prefixes = ("/docs/", "/ui/", LINK_PREFIX)

    def is_open(self, method: str, path: str) -> bool:
        return method.upper() in OPEN_METHODS and (path in self.exact or path.startswith(self.prefixes))


class APIKeyMiddleware:
    """401 (the one error body; OpenAI's on /v1, so its client raises AuthenticationError) with
    `WWW-Authenticate: Bearer` for a request that needs a key and has no valid one."""

    def __init__(self, app, keys: list[SecretStr], rule: AccessRule):
        self.app, self.rule = app, rule
        self._digests = [_digest(key.get_secret_value().encode("utf-8")) for key in keys]

    def problem(self, headers) -> str | None:
        """Why the request's key does not do (None: it does)."""
        given = next((v for k, v in headers if k == b"authorization"), None)
        if given is None or not given.strip():
            return MISSING
        scheme, _, token = given.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return NOT_BEARER
        digest, match = _digest(token), False
        for known in self._digests:  # every key, always: the time says nothing about which one matched
            match |= hmac.compare_digest(digest, known)
        return None if match else INVALID

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = _route_path(scope)
        if self.rule.is_open(scope.get("method", "GET"), path) or (problem := self.problem(scope["headers"])) is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # none today; closing before the handshake refuses it (403)
            return await send({"type": "websocket.close", "code": 1008})
        exc = Unauthorized(problem)
        response = error_response(status_of(exc), exc.type, exc.message, headers={"WWW-Authenticate": "Bearer"},
                                  path=path)
        await response(scope, receive, send)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _route_path(scope) -> str:
    """The path as the routes see it (without the root path a proxy mounts the service under)."""
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def document_keys(app: FastAPI, rule: AccessRule) -> None:
    """An HTTP bearer security scheme (Swagger UI's "Authorize" button sends the header), and on each
    operation that needs a key: `security` and its 401 (in OpenAI's error body under /v1)."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()  # built once and kept (api/openapi.py); patch it once
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        if SCHEME not in schemes:
            schemes[SCHEME] = {"type": "http", "scheme": "bearer",
                               "description": "One of the service's API keys (the `api_keys` setting)."}
            for path, ops in schema["paths"].items():
                for method, op in ops.items():
                    if rule.is_open(method, path):
                        continue
                    body = "OpenAIErrorBody" if path.startswith(OPENAI_PREFIX) else "ErrorBody"
                    op["security"] = [{SCHEME: []}]
                    op.setdefault("responses", {})["401"] = {
                        "description": "No API key, or not a valid one (`Authorization: Bearer <key>`)",
                        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
        return schema

    app.openapi = openapi


def install_access(app: FastAPI, settings: ServiceSettings) -> None:
    """The key check (when keys are set), then CORS around it (when origins are set): a preflight carries
    no key and is answered by CORS; a 401 carries CORS headers, so a page can read why it was refused.
    Call between the body limit and the request-id middleware (the request id wraps both)."""
    if settings.api_keys:
        rule = AccessRule(app, settings.metrics_open)
        app.add_middleware(APIKeyMiddleware, keys=settings.api_keys, rule=rule)
        document_keys(app, rule)
    if settings.cors_origins:
        # allow_headers "*": Starlette then allows the headers a preflight asks for (Authorization, and the
        # x-stainless-* headers the openai JS client sends); the origin list is what guards.
        # No credentials (cookies): the key travels in a header the page sets itself.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "HEAD", "POST", "DELETE"], allow_headers=["*"],
                           expose_headers=EXPOSED_HEADERS, max_age=600)
