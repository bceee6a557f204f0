"""The engine as the HTTP layer sees it: one small async interface, and its local implementation.

Routes take an `EngineClient` from `app.state.engine` and nothing else of the engine. `LocalEngine`
implements it over a FluxModelManager in this process: blocking work (LoRA checks that may read or
download a file, LoRA pinning, loading) runs in threads, never on the event loop. A front end that
routes to engines elsewhere implements the same interface, with job objects that offer what `JobView`
lists, and no route changes.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from ..errors import GenerationTimeout
from .lora import LoraSpec
from .scheduler import QUEUED, Job
from .types import FAILED, LOADING, WARMING_UP, GenerationParams


class JobView(Protocol):
    """What the routes read of a job (the scheduler's Job is one)."""

    id: str
    state: str  # queued | running | done | failed | cancelled | timed_out
    step: int
    total_steps: int  # over all its images
    num_images: int
    replica: int | None
    created: float
    started: float | None
    finished: float | None
    cancel_reason: str | None
    error: BaseException | None
    result: Any  # a GenerationResult once done
    request_id: str | None
    deadline: float | None
    future: Future  # resolves to the result, or raises the job's error
    extra: dict  # the HTTP layer's own notes on the job (its format, its encoded response)

    def eta_s(self) -> float | None: ...
    def image_index(self) -> int: ...  # the image (1-based) the current step belongs to


class EngineClient(Protocol):
    """What every route needs of an engine."""

    service: str
    model: str

    # lifecycle
    async def start(self) -> None: ...  # pre-flight (raises to stop start-up), then load in the background
    def begin_shutdown(self) -> None: ...  # at SIGTERM, any thread, quick: no new work, queued work cancelled (503)
    async def stop(self) -> None: ...  # cancel queued work, finish running work, free the memory
    async def load(self, wait: bool) -> dict: ...  # /load-model: {"status", "started", "phase", ["error"]}
    def health(self) -> dict: ...  # {"ready", "phase", "error": str | None, "replicas": {"alive": n, "dead": [i]},
    #                                 "restarting": [i]}
    def backend_name(self) -> str: ...

    # generation
    async def submit(self, params: GenerationParams, deadline: float, request_id: str | None) -> JobView: ...
    def job(self, job_id: str) -> JobView: ...  # JobNotFound
    def jobs(self, limit: int, states: frozenset[str] | None = None) -> list[JobView]: ...  # newest first
    def position(self, job: JobView) -> int | None: ...
    def cancel(self, job: JobView, reason: str, error: Exception | None = None) -> bool: ...  # False: it had ended
    def events(self, job: JobView) -> AsyncIterator[dict]: ...  # with aclose(): stop listening

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


class JobEvents:
    """A job's progress events as an async iterator. Listening starts at creation and ends at the job's
    end or at `aclose()`, whichever comes first (an async generator's `finally` would not run if it was
    never started, and its listener would stay until the job is pruned)."""

    def __init__(self, job: Job):
        self.job = job
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
        job.listen(self.loop, self.queue)

    def __aiter__(self) -> "JobEvents":
        return self

    async def __anext__(self) -> dict:
        # Every progress event is delivered, the last step's too: the stream ends on the job's "end"
        # event, not on its state (which a worker sets before the loop has run the callbacks that put
        # the last steps' events here). A listener that came after the end gets no "end" event: once
        # the job is finished, one turn of the loop runs every callback scheduled before it.
        while True:
            if self.queue.empty() and self.job.finished is not None:
                await asyncio.sleep(0)
                if self.queue.empty():
                    break
            event = await self.queue.get()
            if event["event"] == "progress":
                return event
            if event["event"] == "end":
                break
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.job.unlisten(self.loop, self.queue)


class LocalEngine:
    """EngineClient over a FluxModelManager in this process."""

    def __init__(self, manager, check_threads: int = 4):
        self.manager = manager
        self.service = manager.settings.service
        self.model = manager.settings.model
        # LoRA checks get threads of their own: the loop's default pool also encodes images, and a
        # slow check (a Hub download, hashing a large file) must not hold those up.
        self._checks = ThreadPoolExecutor(check_threads, thread_name_prefix="flux-check")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self.manager.preflight)
        # The model loads in the background so the process answers (/health/live, /health 503) at once.
        self.manager.start_background_load()

    def begin_shutdown(self) -> None:
        self.manager.begin_shutdown()

    async def stop(self, grace_s: float = 30.0) -> None:
        await asyncio.to_thread(self.manager.unload, grace_s)
        self._checks.shutdown(wait=False, cancel_futures=True)

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
        m = self.manager
        sched = m.scheduler
        dead = sorted(sched.dead.items()) if sched is not None else []
        alive = sched.alive if sched is not None else 0
        error = m.error or ("; ".join(why for _, why in dead) if dead else None)
        # placement=parallel: a group restarting after a rank failed serves nothing until it is back
        restarting = [r.index for r in m.replicas if r.restarting]
        return {"ready": m.ready and alive > 0, "phase": m.phase, "error": error,
                "replicas": {"alive": alive, "dead": [i for i, _ in dead]}, "restarting": restarting}

    def backend_name(self) -> str:
        return self.manager.backend_name

    # ------------------------------------------------------------------ generation

    async def submit(self, params: GenerationParams, deadline: float, request_id: str | None) -> Job:
        """Check, then queue; a bad request never takes a queue slot. A request that names no LoRA is
        checked right here (nothing in that can block); one that does, on the LoRA-check threads,
        bounded by the request's deadline."""
        if not params.loras:
            checked = self.manager.check(params)
        else:
            ctx = contextvars.copy_context()  # the request id reaches the check's log lines
            future = asyncio.get_running_loop().run_in_executor(self._checks, ctx.run, self.manager.check, params)
            done, _ = await asyncio.wait({future}, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise GenerationTimeout("the request timed out while its LoRAs were being fetched and checked")
            checked = future.result()
        return self.manager.submit(checked, deadline=deadline, request_id=request_id)

    def job(self, job_id: str) -> Job:
        return self.manager.job(job_id)

    def jobs(self, limit: int, states: frozenset[str] | None = None) -> list[Job]:
        return self.manager.jobs(limit, states)

    def position(self, job: Job) -> int | None:
        return self.manager.scheduler.position(job) if job.state == QUEUED and self.manager.scheduler else None

    def cancel(self, job: Job, reason: str, error=None) -> bool:
        return self.manager.scheduler.cancel(job, reason, error)

    def events(self, job: Job) -> JobEvents:
        """The job's progress events ({"event": "progress", step, total_steps, eta_s}) until it ends,
        listened to from this call on, so no step is missed in between."""
        return JobEvents(job)

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
        return {"queued": sched.queued if sched else 0, "running": sched.running if sched else 0,
                "compiles_after_warmup": self.manager.compiles.after_warmup}

    def devices(self) -> list[dict]:
        return self.manager.memory_report()

    def on_job_finished(self, hook) -> None:
        self.manager.job_hooks.append(hook)
