"""Async jobs: POST /jobs (202 + id), GET /jobs/{id} (state, step i/N, ETA, result), DELETE /jobs/{id}
(cancel), GET /jobs/{id}/events (Server-Sent Events: one per step, then the result or the error).

The SSE stream uses FastAPI's own support (EventSourceResponse + ServerSentEvent)."""

import asyncio
import base64
import time

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ...engine.client import EngineClient, JobView
from ...engine.scheduler import DONE, QUEUED, RUNNING, Job
from ...errors import FluxAPIError, JobAlreadyEnded
from ...limits import MEDIA_TYPES
from ...logs import request_id
from ...schemas import JobCreated, JobDetail, JobList, JobState
from ...settings import ServiceSettings
from ..deps import JOB_BODY, EngineDep, JobBody, SettingsDep, WebhooksDep
from ..links import ResultLinks, public_base
from ..errors import error_responses
from ..results import build_response, params_of

router = APIRouter(prefix="/jobs", tags=["jobs"])


async def get_job(job_id: Annotated[str, Path(max_length=64, description="The id POST /jobs returned.")],
                  engine: EngineDep) -> JobView:
    """The job, or JobNotFound (404) before any route body runs: a dependency, so that the event
    stream answers 404 instead of starting a 200 stream it cannot continue."""
    return engine.job(job_id)


JobDep = Annotated[JobView, Depends(get_job)]


def error_of(job: Job) -> dict | None:
    if job.state in (QUEUED, RUNNING, DONE):
        return None
    e = job.error
    if isinstance(e, FluxAPIError):
        return {"type": e.type, "message": e.message}
    return {"type": "internal_error", "message": f"{type(e).__name__}; see the log for request {job.request_id}"}


def snapshot(engine: EngineClient, job: Job) -> dict:
    now = time.monotonic()
    return {
        "id": job.id, "state": job.state, "position": engine.position(job),
        "step": job.step, "total_steps": job.total_steps, "image": job.image_index(), "num_images": job.num_images,
        "eta_s": job.eta_s(), "replica": job.replica,
        "queue_ms": round(((job.started or job.finished or now) - job.created) * 1e3, 2),
        "cancel_requested": job.cancel_reason is not None, "error": error_of(job), "request_id": job.request_id,
    }


async def result_of(job: Job, settings: ServiceSettings) -> dict | None:
    if job.state != DONE:
        return None
    async with job.extra.setdefault("encode_lock", asyncio.Lock()):  # encode once, on first ask
        if "response" not in job.extra:
            resp = await build_response(job.result, job.extra["format"], False, settings, job.extra["arrived"],
                                        job.request_id, job.extra.get("notes", ()))
            job.extra["response"] = resp.model_dump()  # build_response dropped the PIL image
    return job.extra["response"]


async def final_state(engine: EngineClient, job: Job, settings: ServiceSettings, images: bool, links: ResultLinks,
                      base_url: str, delivery_id: str) -> dict:
    """A callback's body: the job as GET /jobs/{id} shows it at its end, with its images as links to
    GET /v1/images/files/{token} (kept as long as finished jobs), or inline as base64 when `images`."""
    result = await result_of(job, settings)
    if result is not None and images:
        result = {**result, "urls": None}
    elif result is not None:
        datas = await asyncio.to_thread(lambda: [base64.b64decode(b) for b in result["images"] or [result["image"]]])
        media_type = MEDIA_TYPES[result["format"]]
        result = {**result, "image": None, "images": None,
                  "urls": [links.url(d, media_type, base_url) for d in datas]}
    return {"type": "job.ended", "delivery_id": delivery_id, "job": {**snapshot(engine, job), "result": result}}


# OpenAPI links: the id in POST /jobs's answer is the job_id of the job routes (clients and the
# stateful fuzz follow them).
JOB_LINKS = {name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
             for name, op in (("get", "get_jobs__job_id__get"), ("cancel", "cancel_jobs__job_id__delete"),
                              ("events", "events_jobs__job_id__events_get"))}


@router.post("", status_code=202, summary="Queue a generation; returns its id once it is checked",
             response_model=JobCreated,
             responses={202: {"links": JOB_LINKS}, **error_responses(403, 404, 429, 503, 504)},
             openapi_extra=JOB_BODY)
async def create(body: JobBody, request: Request, engine: EngineDep, settings: SettingsDep, webhooks: WebhooksDep,
                 response: Response) -> dict:
    """The same body as /generate (plus callback_url and callback_images where webhooks are on). Checked
    first (milliseconds; a Hub LoRA not in the cache is downloaded first), then 202 with the job id;
    follow it with GET /jobs/{id} or its events, or wait for the callback."""
    arrived = time.perf_counter()
    callback = getattr(body, "callback_url", None)
    url = webhooks.check(callback) if callback is not None else None  # refused (422) before anything queues
    params, inputs = await params_of(body, settings)
    job = await engine.submit(params, deadline=time.monotonic() + settings.request_timeout_s,
                              request_id=request_id.get())
    job.extra.update(format=body.output_format, arrived=arrived, notes=inputs.notes)
    if url is not None:
        result_links, images = request.app.state.result_links, body.callback_images
        base_url = public_base(request, settings)
        webhooks.register(job, url, lambda delivery_id: final_state(engine, job, settings, images, result_links,
                                                                    base_url, delivery_id))
    links = {"self": f"/jobs/{job.id}", "events": f"/jobs/{job.id}/events"}
    response.headers["Location"] = links["self"]
    return {**snapshot(engine, job), "links": links}


JobStateName = Literal["queued", "running", "done", "failed", "cancelled", "timed_out"]


@router.get("", summary="The jobs on record, newest first", response_model=JobList, responses=error_responses(422))
async def list_jobs(engine: EngineDep,
                    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 50,
                    state: Annotated[list[JobStateName] | None, Query(description="Only jobs in these states "
                                                                       "(repeat the parameter for several).")] = None) -> dict:
    """Queued and running jobs, and finished ones until they are forgotten (settings jobs_keep and
    jobs_keep_s): each as GET /jobs/{id} shows it, without its result."""
    return {"jobs": [snapshot(engine, j) for j in engine.jobs(limit, frozenset(state) if state else None)]}


@router.get("/{job_id}", summary="A job's state, progress and result", response_model=JobDetail,
            responses=error_responses(404, 422))
async def get(job: JobDep, engine: EngineDep, settings: SettingsDep) -> dict:
    """State (queued, running, done, failed, cancelled, timed_out), queue position, step i/N with an
    ETA, the result (as /generate returns it) once done, and the callback's delivery attempts."""
    webhook = job.extra.get("webhook")
    return {**snapshot(engine, job), "result": await result_of(job, settings),
            "webhook": webhook.view() if webhook is not None else None}


@router.delete("/{job_id}", summary="Cancel a job", response_model=JobState, responses=error_responses(404, 409, 422))
async def cancel(job: JobDep, engine: EngineDep) -> dict:
    """A queued job is cancelled at once; a running one stops at its next denoising step (or before its
    image is handed over), and it ends `cancelled`: a 200 here is always kept. 409, with the state, if
    the job has already ended (a cancel that comes after the image was made cannot take it back)."""
    if not engine.cancel(job, "cancelled by DELETE /jobs"):
        raise JobAlreadyEnded(f"job {job.id} has already ended ({job.state}); nothing was cancelled", state=job.state)
    return snapshot(engine, job)


@router.get("/{job_id}/events", response_class=EventSourceResponse, summary="Progress as Server-Sent Events",
            responses=error_responses(404, 422))
async def events(job: JobDep, engine: EngineDep, settings: SettingsDep):
    """`state` first, then one `progress` event per step ({step, total_steps, eta_s, image, num_images}:
    steps count over all the images), then `result`
    (the /generate body) or `error` ({state, type, message}). An unknown or forgotten id is a 404."""
    events = engine.events(job)  # listening from here on: no step is missed after the snapshot
    try:
        yield ServerSentEvent(event="state", data=snapshot(engine, job))
        async for ev in events:
            yield ServerSentEvent(event="progress", id=str(ev["step"]), data=ev)
        if job.state == DONE:
            yield ServerSentEvent(event="result", data=await result_of(job, settings))
        else:
            yield ServerSentEvent(event="error", data={"state": job.state, **(error_of(job) or {})})
    finally:  # also when the client goes away mid-stream
        await events.aclose()
