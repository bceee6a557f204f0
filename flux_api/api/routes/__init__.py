"""The routes, one module per feature area; both services include all of them."""

from fastapi import APIRouter

from ..errors import error_responses
from . import admin, generation, jobs, loras

# What any route may answer: 413 (a body over max_body_bytes: BodyLimitMiddleware refuses it on every path,
# before any route), 422 (a bad parameter, or a body sent to a route that takes none) and 500 (an unforeseen
# failure, with the request id that is in the log). Each route adds its own.
api_router = APIRouter(responses=error_responses(413, 422, 500))
for module in (admin, generation, loras, jobs):
    api_router.include_router(module.router)
