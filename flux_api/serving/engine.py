"""RayEngine: the EngineClient of the Ray Serve ingress. The routes are the plain service's, unchanged.

What must outlive one model replica lives here, in the ingress: the jobs (the engine's own Scheduler,
whose "replicas" are slots that each forward one job to a deployment), their progress events, result
links (the app's), and the pinned LoRAs, which travel with every request, so a replica started later
by the autoscaler draws them too (a handle never brings a follow-up call back to the same replica).

A job runs as one streaming call to the deployment its `service` names (or `auto`'s pick): each
progress event the replica yields becomes the ingress job's step. Failures map onto the domain
errors: Ray's backpressure -> QueueFull (429, Retry-After); a replica that died before the job's first
step -> retried once on another replica (no event was sent, so none is repeated); after it -> failed,
saying why; a domain error raised in the replica -> that error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
)

from ..engine.client import JobEvents
from ..engine.lora import LoraSpec, list_lora_folder
from ..engine.scheduler import QUEUED, Job, Scheduler
from ..engine.types import READY, GenerationParams
from ..errors import (
    FluxAPIError,
    GenerationFailed,
    GenerationTimeout,
    JobCancelled,
    JobNotFound,
    LoraNotPinned,
    QueueFull,
)
from ..settings import ServiceSettings
from .routing import Replicas, ReplicaView, expected_wait_s, pick

log = logging.getLogger(__name__)
REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


class _ReplicaGone(Exception):
    """A Ray call met a replica that died (its name: Ray's error); the caller decides to retry or fail."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


async def _awaited(response):
    return await response  # a DeploymentResponse, as a coroutine asyncio.wait_for can cancel


class _Slot:
    """One generation in flight from the ingress to a deployment (the Scheduler's "replica")."""

    def __init__(self, index: int):
        self.index = index

    def on_thread_start(self) -> None:
        pass


class RayEngine:
    def __init__(self, settings: ServiceSettings, handles: dict, slots: int = 8,
                 replica_view: ReplicaView | None = None, cold_start_s: dict[str, float] | None = None,
                 ray_queue: dict[str, tuple[int, int]] | None = None):
        self.settings = settings
        self.handles = handles  # service -> DeploymentHandle of its FluxModelDeployment
        self.routes = tuple(handles)  # what the `service` field offers (besides auto)
        self.service = "ray"
        self.model = settings.model
        self.slots = slots
        self.scheduler: Scheduler | None = None
        self.pinned: tuple[LoraSpec, ...] = ()
        self.hooks: list = []
        self.replica_view = replica_view  # running replicas per service (None: as if one each)
        self.cold_start_s = {s: 60.0 for s in handles} | (cold_start_s or {})
        # per service: (max_ongoing_requests, max_queued_requests) of its deployment, what Ray accepts
        self.ray_queue = {s: (1, -1) for s in handles} | (ray_queue or {})
        self._routed = {s: 0 for s in handles}  # per service: jobs routed there and not finished
        self._job_s = {s: None for s in handles}  # per service: a moving average of one job's drawing time
        self._lock = threading.Lock()
        self.shutting_down = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.replica_view is not None:
            await asyncio.to_thread(self.replica_view.poll)  # auto routes by a real view from the start
            self.replica_view.start()
        self.scheduler = Scheduler([_Slot(i) for i in range(self.slots)], self.settings.queue_size,
                                   self.settings.jobs_keep, self.settings.jobs_keep_s, on_finish=self._finished)

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        if self.scheduler is not None:
            self.scheduler.drain()

    async def stop(self, grace_s: float = 30.0) -> None:
        if self.replica_view is not None:
            self.replica_view.stop()
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.shutdown, grace_s)

    async def load(self, wait: bool) -> dict:
        # The deployments load in their constructors; Ray starts, restarts and scales them.
        return {"status": "loaded", "started": False, "phase": READY}

    def health(self) -> dict:
        alive = self.scheduler.alive if self.scheduler else 0
        return {"ready": alive > 0 and not self.shutting_down, "phase": READY, "error": None,
                "replicas": {"alive": alive, "dead": sorted(self.scheduler.dead) if self.scheduler else []}}

    def backend_name(self) -> str:
        return "ray-serve: " + ", ".join(self.routes)

    # ------------------------------------------------------------------ generation

    def expected_waits(self) -> dict[str, float]:
        """Per service, the rough seconds until a new request would start drawing (routing.py)."""
        known = [t for t in self._job_s.values() if t is not None]
        default_job_s = sum(known) / len(known) if known else 1.0  # unmeasured: as long as the other's
        with self._lock:
            routed = dict(self._routed)
        replicas = self.replica_view.replicas if self.replica_view else {}
        return {s: expected_wait_s(routed[s], replicas.get(s) or Replicas(), self._job_s[s] or default_job_s,
                                   self.cold_start_s[s]) for s in self.routes}

    def choose(self, requested: str | None) -> str:
        """The service a request goes to: the one it names, or (auto) the one with the shorter expected
        wait, the first listed on a tie."""
        if requested not in (None, "auto"):
            return requested
        return pick(self.expected_waits())

    async def submit(self, params: GenerationParams, deadline: float, request_id: str | None) -> Job:
        """Admit (429 past what Ray would accept), check (a request naming LoRAs: the plain service's
        checks, on a replica of the service that will draw it), then queue; as LocalEngine.submit, a bad
        or refused request never becomes a job."""
        service = self.choose(params.service)
        handle = self.handles[service]
        self._admit(service)  # counts the request in _routed[service] from here: the check's call is one of Ray's too
        try:
            # the pinned set (None) was checked when it was pinned, as on a plain service; first_block_cache
            # needs the service's own answer too (its backend and placement may not run it)
            if params.loras or params.first_block_cache is not None:
                await self._check(handle, service, params, deadline)
            # The pinned set travels with the request: whichever replica draws it applies the same LoRAs.
            loras = self.pinned if params.loras is None else params.loras
            params = dataclasses.replace(params, service=service, loras=loras)

            def run(slot: _Slot, job: Job):
                result = self._run(handle, service, params, job)
                self._measured(service, (result.lora_ms + result.inference_ms) / 1000)
                return result

            run.service = service  # _finished counts the job off its service's wait, whichever way it ends
            job = self.scheduler.submit(run, total_steps=params.total_steps, deadline=deadline,
                                        request_id=request_id, num_images=params.num_images)
        except BaseException:
            with self._lock:
                self._routed[service] -= 1
            raise
        job.extra["service"] = service
        return job

    def ray_capacity(self, service: str) -> int | None:
        """How many requests Ray takes for the deployment now before it raises BackPressureError: each
        running replica's max_ongoing_requests, plus max_queued_requests waiting in the handle (None: no
        bound). With no replica running, only the queue (Ray holds requests there while one starts)."""
        max_ongoing, max_queued = self.ray_queue[service]
        if max_queued < 0:
            return None
        replicas = (self.replica_view.replicas.get(service) if self.replica_view else None) or Replicas()
        return replicas.running * max_ongoing + max_queued

    def _admit(self, service: str) -> None:
        """Count a request in for `service`, or refuse it (429) when the requests already routed there
        and not finished (queued in the ingress, checking, or at Ray) fill what Ray would accept: the
        client hears Ray's backpressure on its POST, instead of a job accepted (202) that Ray refuses."""
        bound = self.ray_capacity(service)
        with self._lock:
            routed = self._routed[service]
            if bound is None or routed < bound:
                self._routed[service] = routed + 1
                return
        wait = self.expected_waits()[service]
        raise QueueFull(f"the {service} deployment's queue is full ({routed} requests in flight or waiting for it, "
                        f"as many as its running replicas and its Ray queue take); retry later",
                        retry_after_s=max(1, math.ceil(min(wait, 3600))))

    async def _check(self, handle, service: str, params: GenerationParams, deadline: float) -> None:
        """One awaited call to a replica of `service`: FluxModelManager.check, the plain service's rule
        (ready, each LoRA found, readable, fitting that model and its LoRA slot). Its domain error
        is the answer (404, 422...), before anything is queued."""
        for attempt in (1, 2):
            response = handle.check.remote(params)
            try:
                await asyncio.wait_for(_awaited(response), timeout=max(0.0, deadline - time.monotonic()))
                return
            except asyncio.TimeoutError:
                response.cancel()
                raise GenerationTimeout("the request timed out while its LoRAs were being checked") from None
            except asyncio.CancelledError:
                response.cancel()  # the client went away
                raise
            except BaseException as e:  # each kind mapped below; anything else re-raised
                error = self._ray_error(service, e)
                if error is None:
                    raise
                if isinstance(error, _ReplicaGone):
                    if attempt == 2:
                        raise GenerationFailed(f"the {service} replica checking this request died ({error.name}); "
                                               "send it again") from None
                    continue  # a check is repeatable: once more, on another replica
                raise error from None

    def _ray_error(self, service: str, e: BaseException) -> BaseException | None:
        """What a failed Ray call means to a client: Ray's backpressure -> QueueFull (429); a domain
        error raised in the replica -> that error; a replica gone -> _ReplicaGone; else None."""
        if isinstance(e, BackPressureError):
            return QueueFull(f"the {service} deployment's queue is full ({e.message}); retry later",
                             retry_after_s=max(1, int(e.retry_after_s or 5)))
        if isinstance(e, RayTaskError):
            cause = e.cause
            if isinstance(cause, FluxAPIError):
                return cause
            return GenerationFailed(f"the {service} replica failed: {type(cause).__name__}: {cause}")
        if isinstance(e, REPLICA_GONE):
            if self.replica_view is not None:
                self.replica_view.lost(service)  # auto routes around it before Ray's health check
            return _ReplicaGone(type(e).__name__)
        return None

    def _measured(self, service: str, seconds: float) -> None:
        old = self._job_s[service]
        self._job_s[service] = seconds if old is None else 0.7 * old + 0.3 * seconds

    def _run(self, handle, service: str, params: GenerationParams, job: Job):
        for attempt in (1, 2):
            stream = handle.options(stream=True).generate.remote(params, job.request_id)
            job.extra["ray_stream"] = stream  # cancel() stops it while the slot waits for an event
            stepped = False
            try:
                job.check_interrupt()  # cancelled while the call was being made
                for event in stream:
                    if event["event"] == "progress":
                        stepped = True
                        job.on_step(event["step"])  # raises once the job is cancelled or past its deadline
                    elif event["event"] == "result":
                        return event["result"]
                raise GenerationFailed(f"the {service} replica ended the job without a result")
            except (JobCancelled, GenerationTimeout):
                stream.cancel()
                raise
            except RequestCancelledError:
                job.check_interrupt()  # the job's own cancel error
                raise GenerationFailed(f"the {service} request was cancelled by Ray Serve")
            except (BackPressureError, RayTaskError, *REPLICA_GONE) as e:
                error = self._ray_error(service, e)
                if not isinstance(error, _ReplicaGone):
                    raise error from None
                if stepped or attempt == 2:
                    raise GenerationFailed(f"the {service} replica drawing this job died mid-run ({error.name}); "
                                           "Ray replaces it: submit again") from None
                log.warning("the %s replica died before job %s started; retrying once on another", service, job.id)
            finally:
                job.extra.pop("ray_stream", None)

    def job(self, job_id: str) -> Job:
        if self.scheduler is None:
            raise JobNotFound(f"no job {job_id}: the service has not started")
        return self.scheduler.find(job_id, self.settings.jobs_keep_s, self.settings.jobs_keep)

    def jobs(self, limit: int, states: frozenset[str] | None = None) -> list[Job]:
        return self.scheduler.recent(limit, states) if self.scheduler else []

    def position(self, job: Job) -> int | None:
        return self.scheduler.position(job) if job.state == QUEUED else None

    def cancel(self, job: Job, reason: str, error=None) -> bool:
        cancelled = self.scheduler.cancel(job, reason, error)
        stream = job.extra.get("ray_stream")
        if cancelled and stream is not None:
            stream.cancel()  # wakes the slot blocked on the next event; the replica cancels its job
        return cancelled

    def events(self, job: Job) -> JobEvents:
        return JobEvents(job)

    # ------------------------------------------------------------------ LoRA pinning, owned by the ingress

    async def apply_loras(self, loras: tuple[LoraSpec, ...]) -> dict:
        """Pin a set after each deployment has checked it (found, fits); every later request carries it."""
        for service, handle in self.handles.items():
            try:
                await handle.check_loras.remote(loras)
            except (BackPressureError, RayTaskError, *REPLICA_GONE) as e:
                error = self._ray_error(service, e)
                if isinstance(error, _ReplicaGone):
                    error = GenerationFailed(f"the {service} replica checking the LoRAs died ({error.name}); send it again")
                raise error from None
        self.pinned = tuple(loras)
        return await self.lora_status()

    async def remove_loras(self, name: str | None) -> dict:
        if name is not None and name not in {s.name for s in self.pinned}:
            raise LoraNotPinned(f"LoRA {name!r} is not pinned: nothing to remove")
        self.pinned = tuple(s for s in self.pinned if name is not None and s.name != name)
        return await self.lora_status()

    async def lora_status(self) -> dict:
        # "loaded" is per replica and replicas come and go: the ingress reports none.
        return {"pinned": [s.as_dict() for s in self.pinned], "loaded": [],
                "cache_size": self.settings.lora_cache_size, "lora_dir": str(self.settings.lora_dir)}

    async def list_loras(self) -> dict:
        return {"available": await asyncio.to_thread(list_lora_folder, self.settings.lora_dir),
                **await self.lora_status()}

    async def status(self) -> dict:
        services = {}
        replicas = self.replica_view.replicas if self.replica_view else {}
        waits = self.expected_waits()
        for name, handle in self.handles.items():
            r = replicas.get(name) or Replicas()
            services[name] = {"replicas": r.running, "deployment_status": r.status,
                              "expected_wait_s": None if waits[name] == float("inf") else round(waits[name], 2)}
            if r.running == 0:
                continue  # asking would cold-start a replica (or wait for one that cannot start)
            try:
                services[name] |= await asyncio.wait_for(handle.info.remote(), 10)  # one replica's view
            except Exception as e:  # noqa: BLE001 - a status page reports, never fails
                services[name]["error"] = f"{type(e).__name__}: {e}"
        with self._lock:
            routed = dict(self._routed)
        return {"service": "ray", "phase": READY, "model": self.model, "routes": list(self.routes),
                "pinned": [s.as_dict() for s in self.pinned], "services": services, "in_flight": routed}

    # ------------------------------------------------------------------ observability

    def counts(self) -> dict:
        s = self.scheduler
        return {"queued": s.queued if s else 0, "running": s.running if s else 0}

    def devices(self) -> list[dict]:
        return []  # the GPUs are the replicas', on other processes or machines

    def on_job_finished(self, hook) -> None:
        self.hooks.append(hook)

    def _finished(self, job: Job) -> None:
        service = getattr(job.fn, "service", None)
        if service is not None:
            with self._lock:
                self._routed[service] -= 1
        for hook in self.hooks:
            hook(job)
