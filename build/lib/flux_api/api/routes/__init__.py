"""The routes, one module per feature area; both services include all of them."""

from fastapi import APIRouter

from . import admin, generation, jobs, loras

api_router = APIRouter()
for module in (admin, generation, loras, jobs):
    api_router.include_router(module.router)
