"""The ASGI middleware around every request: its id, its access-log line and metrics, and the body limit.

Request ids: a client's `X-Request-ID` is kept as sent when it is 1-128 printable ASCII characters
(letters, digits, punctuation; no spaces or control characters). Anything else is replaced by a fresh
id, and the response says why in `X-Request-ID-Replaced`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders

from ..errors import BodyTooLarge
from ..logs import escape_controls, request_id
from ..metrics import Metrics
from .errors import error_response, status_of

log = logging.getLogger("flux_api")
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")


def request_id_problem(given: bytes | None) -> str | None:
    """Why a client's X-Request-ID cannot be kept as sent (None: it can, or none was sent)."""
    if given is None:
        return None
    if not given:
        return "empty"
    if len(given) > MAX_REQUEST_ID:
        return f"longer than {MAX_REQUEST_ID} characters"
    if not _REQUEST_ID.fullmatch(given.decode("latin-1")):
        return "not printable ASCII (letters, digits and punctuation; no spaces or control characters)"
    return None


MAX_LOGGED_PATH = 512


def path_for_log(scope) -> str:
    """The path as the client sent it (percent-escapes kept), never a decoded control character, and
    not more than MAX_LOGGED_PATH characters of it."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    if len(path) > MAX_LOGGED_PATH:
        path = f"{path[:MAX_LOGGED_PATH]}... ({len(path)} characters)"
    return escape_controls(path)


class HeadAsGet:
    """HEAD wherever GET is (RFC 9110): the GET route answers, and only its status and headers go out.
    FastAPI's routes take GET alone, and a health probe with `curl -I` must not get a 405."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        done = False

        async def headers_only(message):
            nonlocal done
            if message["type"] == "http.response.start":
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                done = True
            elif not done:
                await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class RequestIdMiddleware:
    """Give every request an id (the client's X-Request-ID if it is valid), echo it, log and count the
    request. A request whose client went away is logged and counted as 499. An unhandled error is a
    500 with the one error body and the request id, logged with its traceback."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        problem = request_id_problem(given)
        rid = given.decode("ascii") if given is not None and problem is None else uuid.uuid4().hex
        token = request_id.set(rid)
        if problem:
            log.info("X-Request-ID replaced: the one sent was %s", problem)
        t0, status, started = time.perf_counter(), [500], [False]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                if problem:
                    headers["X-Request-ID-Replaced"] = problem
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as e:
            # Here, not in an app exception handler: Starlette runs that one outside every middleware,
            # where the answer would lose its request id.
            log.exception("unhandled error on %s %s", scope["method"], path_for_log(scope))
            if started[0]:
                raise  # the answer is under way: only closing the connection can say it failed
            await error_response(500, "internal_error", f"internal error ({type(e).__name__}); see the server "
                                 f"log for request {rid}", path=scope["path"])(scope, receive, send_with_id)
        finally:
            log.info("%s %s -> %d in %.1f ms", scope["method"], path_for_log(scope), status[0],
                     (time.perf_counter() - t0) * 1e3)
            route = getattr(scope.get("route"), "path", "unmatched")  # the template: /jobs/{job_id}
            self.metrics.observe_request(scope["method"], route, status[0])
            request_id.reset(token)


class BodyLimitMiddleware:
    """Refuse a body over `max_bytes` with a 413: at once when Content-Length says so, else as soon as
    the streamed body passes the limit (nothing larger is ever held in memory)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"the request body is larger than {self.max_bytes} bytes")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            exc = self._too_large()
            return await error_response(status_of(exc), exc.type, exc.message, path=scope["path"])(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()  # api/errors.py answers 413 where the body was being read
            return message

        await self.app(scope, counting_receive, send)
