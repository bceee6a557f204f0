"""The engine as the HTTP layer sees it: one small async interface, and its local implementation.

Routes take an `EngineClient` from `app.state.engine` and nothing else of the engine. `LocalEngine`
implements it over a FluxModelManager in this process: blocking work (checks that may read or
download a LoRA, LoRA pinning, loading) runs in threads, never on the event loop. A front end that
routes to engines elsewhere implements the same interface, and no route changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from ..errors import GenerationTimeout
from .devices import memory_report
from .lora import LoraSpec
from .scheduler import FINAL, QUEUED, Job
from .types import FAILED, LOADING, WARMING_UP, GenerationParams


class EngineClient(Protocol):
    """What every route needs of an engine."""

    service: str
    model: str

    # lifecycle
    async def start(self) -> None: ...  # pre-flight (raises to stop start-up), then load in the background
    async def stop(self) -> None: ...  # cancel queued work, finish running work, free the memory
    async def load(self, wait: bool) -> dict: ...  # /load-model: {"status", "started", "phase", ["error"]}
    def health(self) -> dict: ...  # {"ready": bool, "phase": str, "error": str | None}
    def backend_name(self) -> str: ...

    # generation
    async def submit(self, params: GenerationParams, deadline: float, request_id: str | None) -> Job: ...
    def job(self, job_id: str) -> Job: ...
    def position(self, job: Job) -> int | None: ...
    def cancel(self, job: Job, reason: str) -> bool: ...
    def events(self, job: Job) -> AsyncIterator[dict]: ...

    # LoRA and status
    async def apply_loras(self, loras: tuple[LoraSpec, ...]) -> dict: ...
    async def remove_loras(self, name: str | None) -> dict: ...
    async def lora_status(self) -> dict: ...
    async def list_loras(self) -> dict: ...
    async def status(self) -> dict: ...

    # observability (metrics), cheap and synchronous
    def counts(self) -> dict: ...  # {"queued": n, "running": n}
    def devices(self) -> list[dict]: ...  # each device's memory
    def on_job_finished(self, hook) -> None: ...


class LocalEngine:
    """EngineClient over a FluxModelManager in this process."""

    def __init__(self, manager):
        self.manager = manager
        self.service = manager.settings.service
        self.model = manager.settings.model

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self.manager.preflight)
        # The model loads in the background so the process answers (/health/live, /health 503) at once.
        self.manager.start_background_load()

    async def stop(self, grace_s: float = 30.0) -> None:
        await asyncio.to_thread(self.manager.unload, grace_s)

    async def load(self, wait: bool) -> dict:
        m = self.manager
        if m.ready:
            return {"status": "loaded", "started": False, "phase": m.phase}
        started = m.start_background_load()
        while wait and m.phase in (LOADING, WARMING_UP):
            await asyncio.sleep(0.1)
        if m.ready:
            return {"status": "loaded", "started": started, "phase": m.phase}
        body = {"status": "failed" if m.phase == FAILED else "loading", "started": started, "phase": m.phase}
        if m.error:
            body["error"] = m.error
        return body

    def health(self) -> dict:
        return {"ready": self.manager.ready, "phase": self.manager.phase, "error": self.manager.error}

    def backend_name(self) -> str:
        return self.manager.backend_name

    # ------------------------------------------------------------------ generation

    async def submit(self, params: GenerationParams, deadline: float, request_id: str | None) -> Job:
        """Check in a thread (bounded by the request's deadline), then queue. A bad request never
        takes a queue slot."""
        try:
            checked = await asyncio.wait_for(asyncio.to_thread(self.manager.check, params),
                                             timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise GenerationTimeout("the request timed out while its LoRAs were being fetched and checked") from None
        return self.manager.submit(checked, deadline=deadline, request_id=request_id)

    def job(self, job_id: str) -> Job:
        return self.manager.job(job_id)

    def position(self, job: Job) -> int | None:
        return self.manager.scheduler.position(job) if job.state == QUEUED and self.manager.scheduler else None

    def cancel(self, job: Job, reason: str) -> bool:
        return self.manager.scheduler.cancel(job, reason)

    def events(self, job: Job) -> AsyncIterator[dict]:
        """The job's progress events ({"event": "progress", step, total_steps, eta_s}) until it ends.
        Listens from the call on (not from the first iteration), so no step is missed in between."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        job.listen(loop, queue)

        async def stream() -> AsyncIterator[dict]:
            try:
                while job.state not in FINAL:
                    event = await queue.get()
                    if event["event"] == "progress":
                        yield event
            finally:
                job.unlisten(loop, queue)

        return stream()

    # ------------------------------------------------------------------ LoRA and status

    async def apply_loras(self, loras: tuple[LoraSpec, ...]) -> dict:
        return await asyncio.to_thread(self.manager.apply_loras, loras)

    async def remove_loras(self, name: str | None) -> dict:
        return await asyncio.to_thread(self.manager.remove_loras, name)

    async def lora_status(self) -> dict:
        return self.manager.lora_status()

    async def list_loras(self) -> dict:
        return await asyncio.to_thread(self.manager.list_loras)

    async def status(self) -> dict:
        return self.manager.status()

    # ------------------------------------------------------------------ observability

    def counts(self) -> dict:
        sched = self.manager.scheduler
        return {"queued": sched.queued if sched else 0, "running": sched.running if sched else 0}

    def devices(self) -> list[dict]:
        return memory_report(self.manager.hardware)

    def on_job_finished(self, hook) -> None:
        self.manager.job_hooks.append(hook)
