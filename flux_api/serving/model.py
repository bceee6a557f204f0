"""FluxModelDeployment: one Ray Serve replica = one FluxModelManager with one pipeline.

The replica reuses the plain service's engine whole (checks, scheduler, LoRA adapters, cancel at each
step). `generate` is a streaming method: it yields the job's progress events, then one
{"event": "result"} with the GenerationResult (PIL images travel pickled; the ingress encodes them).
When the caller stops listening (the ingress cancelled the request), the job is cancelled here too.
Ray wraps this class in app.py (serve.deployment); only `actor` imports Ray.
"""

from __future__ import annotations

import asyncio
import logging

from ..app import build_manager
from ..engine.client import JobEvents
from ..engine.lora import LoraSpec
from ..engine.types import GenerationParams
from ..errors import ModelNotReady
from ..settings import SETTINGS_CLASSES

log = logging.getLogger(__name__)


class FluxModelDeployment:
    def __init__(self, service: str, settings: dict, torch_threads: int | None = None):
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
        self.service = service
        self.settings = SETTINGS_CLASSES[service](**{"replicas": 1, **settings})
        self.manager = build_manager(self.settings)
        # The load runs in the constructor: Ray sends a replica no request before its constructor
        # returns, so a replica that answers has its pipeline (and a failed load is a failed replica).
        self.manager.preflight()
        self.manager.load()

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose worker died is restarted by Ray."""
        m = self.manager
        if not m.ready or m.scheduler is None or not m.scheduler.alive:
            raise ModelNotReady(m.phase, f"{self.service} replica cannot generate: {m.error or 'no live worker'}")

    def info(self) -> dict:
        m = self.manager
        return {"service": self.service, "model": m.settings.model, "backend": m.backend_name, "phase": m.phase,
                "queued": m.scheduler.queued if m.scheduler else 0, "running": m.scheduler.running if m.scheduler else 0}

    def actor(self) -> dict:
        """This replica's process and Ray actor (tests kill it to see Ray replace it)."""
        import os

        import ray

        return {"pid": os.getpid(), "actor": ray.get_runtime_context().current_actor}

    async def check(self, params: GenerationParams) -> None:
        """The plain service's checks before its queue (FluxModelManager.check: ready,
        each LoRA found, readable and fitting this model); raises the domain error. The ingress awaits
        this before it accepts a request that names LoRAs, so a bad one is refused as a plain service
        refuses it, never accepted and then failed."""
        await asyncio.to_thread(self.manager.check, params)

    async def check_loras(self, loras: tuple[LoraSpec, ...]) -> list[dict]:
        """Check a LoRA set as /apply-lora would (found, fits this model); raises the domain error."""
        m = self.manager
        await asyncio.to_thread(m.check_loras, loras)
        return [s.as_dict() for s in loras]

    async def generate(self, params: GenerationParams, request_id: str | None = None):
        m = self.manager
        checked = await asyncio.to_thread(m.check, params)
        job = m.submit(checked, request_id=request_id)
        events = JobEvents(job)
        try:
            async for event in events:
                yield event
            result = await asyncio.wrap_future(job.future)
            result.service = self.service
            yield {"event": "result", "result": result}
        finally:
            await events.aclose()
            if job.finished is None:  # the caller went away (cancelled, timed out, or itself gone)
                m.scheduler.cancel(job, "the request was cancelled at the Ray ingress")
