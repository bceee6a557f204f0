"""The explicit queue in front of the pipelines: jobs, replicas, cancellation, deadlines.

One bounded FIFO queue per service feeds one worker thread per replica (one pipeline each). A job
is accepted or refused at once (QueueFull -> 429), and an accepted job always ends as done, failed,
cancelled or timed out, with a reason. Control work (LoRA changes) is broadcast to every replica and
runs between two generations on each, so it never touches a pipeline that is generating.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import FluxAPIError, GenerationFailed, GenerationTimeout, JobCancelled, QueueFull, ShuttingDown

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED, TIMED_OUT = "queued", "running", "done", "failed", "cancelled", "timed_out"
FINAL = (DONE, FAILED, CANCELLED, TIMED_OUT)


@dataclass
class Job:
    fn: Callable[..., Any]  # fn(replica, job) -> result, run on a worker thread
    total_steps: int = 0  # over all its images
    num_images: int = 1
    deadline: float | None = None  # time.monotonic() by which it must be done
    request_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = QUEUED
    step: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    step_times: list = field(default_factory=list)
    replica: int | None = None
    result: Any = None
    error: BaseException | None = None
    reason: str | None = None
    cancel_reason: str | None = None
    cancel_error: FluxAPIError | None = None  # what the run raises at its next step once cancelled
    future: Future = field(default_factory=Future)
    extra: dict = field(default_factory=dict)  # e.g. the encoded response, cached by the HTTP layer
    _ctx: contextvars.Context = field(default_factory=contextvars.copy_context)
    _listeners: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- progress, called on the worker thread

    def on_step(self, step: int) -> None:
        """Record step `step` (1-based) done; raise to stop the run if it was cancelled or timed out."""
        self.step = step
        self.step_times.append(time.monotonic())
        self._notify({"event": "progress", "step": step, "total_steps": self.total_steps, "eta_s": self.eta_s(),
                      "image": self.image_index(), "num_images": self.num_images})
        self.check_interrupt()

    def check_interrupt(self) -> None:
        if self.cancel_reason is not None:
            raise self.cancel_error or JobCancelled(f"job cancelled: {self.cancel_reason}")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise GenerationTimeout("the request timed out (queue wait plus generation) and was stopped")

    def image_index(self) -> int:
        """Which image (1-based) the current step belongs to."""
        per_image = max(1, self.total_steps // max(1, self.num_images))
        return min(self.num_images, max(0, self.step - 1) // per_image + 1)

    def eta_s(self) -> float | None:
        if self.state != RUNNING or not self.step or not self.started:
            return None
        per_step = (time.monotonic() - self.started) / self.step
        return round(per_step * (self.total_steps - self.step), 2)

    # --- listeners (SSE): thread-safe hand-off to asyncio queues

    def listen(self, loop, queue) -> None:
        with self._lock:
            self._listeners.append((loop, queue))

    def unlisten(self, loop, queue) -> None:
        with self._lock:
            if (loop, queue) in self._listeners:
                self._listeners.remove((loop, queue))

    def _notify(self, event: dict) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: that listener is gone
                pass

    def _finish(self, state: str, result: Any = None, error: BaseException | None = None, reason: str | None = None):
        self.state, self.result, self.error, self.reason = state, result, error, reason
        self.finished = time.monotonic()
        self._notify({"event": "end", "state": state})
        if self.future.done():  # a waiter cancelled its asyncio view of it; nothing to hand over
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)



def _stopped_state(job: Job) -> str:
    """The end state of a job stopped from outside: timed out when its deadline stopped it."""
    return TIMED_OUT if isinstance(job.cancel_error, GenerationTimeout) else CANCELLED


@dataclass
class _Control:
    fn: Callable[..., Any]
    future: Future = field(default_factory=Future)
    ctx: contextvars.Context = field(default_factory=contextvars.copy_context)


class Scheduler:
    def __init__(self, replicas: list, max_pending: int, keep_finished: int = 256, keep_seconds: float = 3600.0,
                 on_finish: Callable[[Job], None] | None = None):
        self.replicas = replicas
        self.max_pending = max_pending
        self.keep_finished, self.keep_seconds = keep_finished, keep_seconds
        self.on_finish = on_finish or (lambda job: None)
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._controls = {r.index: deque() for r in replicas}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: dict[int, Job] = {}
        self.dead: dict[int, str] = {}  # replica index -> why its worker stopped
        self._stop = False
        self._threads = [threading.Thread(target=self._work, args=(r,), name=f"flux-replica-{r.index}", daemon=True)
                         for r in replicas]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ queries

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def alive(self) -> int:
        """Replicas whose worker is running."""
        return len(self.replicas) - len(self.dead)

    def find(self, job_id: str, keep_s: float, keep: int) -> Job:
        """The job, or JobNotFound saying how long finished jobs are kept (settings jobs_keep_s, jobs_keep)."""
        from ..errors import JobNotFound

        job = self.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id} (finished jobs are kept for {keep_s:.0f} s, the last {keep})")
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            self._prune()
            return self._jobs.get(job_id)

    def recent(self, limit: int, states: frozenset[str] | None = None) -> list[Job]:
        """The jobs still on record (queued, running, and finished ones not yet forgotten), newest first."""
        with self._cond:
            self._prune()
            jobs = [j for j in reversed(self._jobs.values()) if states is None or j.state in states]
        return jobs[:limit]

    def position(self, job: Job) -> int | None:
        """0 = next to run; None when not queued."""
        with self._cond:
            try:
                return self._queue.index(job)
            except ValueError:
                return None

    # ------------------------------------------------------------------ submitting

    def submit(self, fn: Callable[..., Any], total_steps: int = 0, deadline: float | None = None,
               request_id: str | None = None, num_images: int = 1) -> Job:
        with self._cond:
            if self._stop:
                raise ShuttingDown()
            if not self.alive:
                raise GenerationFailed("no replica can generate: " + "; ".join(self.dead.values()))
            if len(self._queue) >= self.max_pending:
                raise QueueFull(f"the queue is full ({self.max_pending} requests waiting); retry later",
                                retry_after_s=self._retry_after())
            job = Job(fn=fn, total_steps=total_steps, deadline=deadline, request_id=request_id, num_images=num_images)
            self._queue.append(job)
            self._jobs[job.id] = job
            self._prune()
            self._cond.notify_all()
        return job

    def _retry_after(self) -> int:
        """A rough wait for a place in the queue: the average recent run time, at least a second."""
        recent = [j.finished - j.started for j in list(self._jobs.values())[-20:] if j.finished and j.started]
        per_job = sum(recent) / len(recent) if recent else 5.0
        return max(1, int(per_job * max(1, len(self._queue)) / max(1, len(self.replicas))))

    def broadcast(self, fn: Callable[..., Any]) -> list[Future]:
        """Run fn(replica) on every replica, between generations. Not counted against the queue."""
        futures = []
        with self._cond:
            if self._stop:  # the workers are stopping: nobody would run it
                raise ShuttingDown()
            for r in self.replicas:
                if r.index in self.dead:  # it serves nothing, and nobody would answer
                    continue
                c = _Control(fn)
                self._controls[r.index].append(c)
                futures.append(c.future)
            self._cond.notify_all()
        return futures

    def cancel(self, job: Job, reason: str, error: FluxAPIError | None = None) -> bool:
        """Cancel a queued job at once, a running one at its next step (or before its result is handed
        over): True is a promise that the job ends cancelled. False if it already ended (or its result
        was already handed over). `error` is what the job's waiter gets (JobCancelled by default)."""
        with self._cond:
            if job.state in FINAL:
                return False
            job.cancel_reason = reason
            job.cancel_error = error or JobCancelled(f"job cancelled: {reason}")
            queued = job.state == QUEUED
            if queued:
                self._queue.remove(job)
        if queued:
            job._finish(_stopped_state(job), error=job.cancel_error, reason=reason)
            self._finished(job)
        return True

    # ------------------------------------------------------------------ the workers

    def _work(self, replica) -> None:
        try:
            replica.on_thread_start()
            self._serve(replica)
        except BaseException as e:  # noqa: BLE001 - a worker that stops must say so, never vanish
            self._died(replica, f"replica {replica.index}'s worker stopped: {type(e).__name__}: {e}")

    def _died(self, replica, why: str) -> None:
        """Record a dead worker; fail what it held. With no worker left, fail what is queued too, so
        that nothing waits for a worker that will never come."""
        log.error("%s", why)
        error = GenerationFailed(why)
        with self._cond:
            self.dead[replica.index] = why
            job = self._running.pop(replica.index, None)
            controls = list(self._controls[replica.index])
            self._controls[replica.index].clear()
            orphans = list(self._queue) if not self.alive else []
            if orphans:
                self._queue.clear()
        for c in controls:
            c.future.set_exception(error)
        for j in ([job] if job is not None and job.state not in FINAL else []) + orphans:
            j._finish(FAILED, error=error, reason=why)
            self._finished(j)

    def _serve(self, replica) -> None:
        controls = self._controls[replica.index]
        while True:
            with self._cond:
                while not self._stop and not controls and not self._queue:
                    self._cond.wait()
                if controls:
                    item = controls.popleft()
                elif self._queue:
                    item = self._queue.popleft()
                    item.state, item.started, item.replica = RUNNING, time.monotonic(), replica.index
                    self._running[replica.index] = item
                else:
                    return
            if isinstance(item, _Control):
                try:
                    item.future.set_result(item.ctx.run(item.fn, replica))
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    item.future.set_exception(e)
                continue
            self._run(replica, item)

    def _run(self, replica, job: Job) -> None:
        try:
            job.check_interrupt()  # it may have timed out while it waited
            result = job._ctx.run(job.fn, replica, job)
        except JobCancelled as e:
            job._finish(CANCELLED, error=e, reason=job.cancel_reason)
        except GenerationTimeout as e:
            job._finish(TIMED_OUT, error=e, reason=e.message)
        except FluxAPIError as e:
            job._finish(FAILED, error=e, reason=e.message)
        except BaseException as e:  # noqa: BLE001 - the job fails, the worker lives on
            log.exception("job %s failed", job.id)
            job._finish(FAILED, error=e, reason=f"{type(e).__name__}: {e}")
        else:
            # The result is handed over under the lock that cancel() takes: a cancel either comes
            # first (the image is discarded and the job ends cancelled) or finds the job done (409).
            with self._cond:
                cancelled = job.cancel_reason is not None
                if not cancelled:
                    job.state = DONE
            if cancelled:
                job._finish(_stopped_state(job), error=job.cancel_error, reason=job.cancel_reason)
            else:
                job._finish(DONE, result=result)
        finally:
            with self._cond:
                self._running.pop(replica.index, None)
        self._finished(job)

    def _finished(self, job: Job) -> None:
        try:
            self.on_finish(job)
        except Exception:  # metrics must never break serving
            log.exception("on_finish hook failed")

    def _prune(self) -> None:
        """Keep finished jobs within a count and an age, so memory stays bounded."""
        now = time.monotonic()
        done = [j for j in self._jobs.values() if j.state in FINAL]
        excess = len(done) - self.keep_finished
        for j in done:
            if excess > 0 or now - (j.finished or now) > self.keep_seconds:
                self._jobs.pop(j.id, None)
                excess -= 1

    # ------------------------------------------------------------------ shutdown

    def drain(self) -> int:
        """The first half of a shutdown, at once: take no more work (submit and broadcast raise
        ShuttingDown) and cancel what is queued with ShuttingDown (its waiters get a 503 with
        Retry-After); running work goes on. Thread-safe, never blocks for long, idempotent. Returns how
        many queued jobs it cancelled."""
        reason = "the service is shutting down"
        with self._cond:
            self._stop = True
            queued = list(self._queue)
            self._queue.clear()  # under the lock: no worker can start one of them meanwhile
            for job in queued:
                job.cancel_reason, job.cancel_error = reason, ShuttingDown()
            self._cond.notify_all()  # idle workers stop; busy ones stop after their job
        for job in queued:
            job._finish(_stopped_state(job), error=job.cancel_error, reason=reason)
            self._finished(job)
        if queued:
            log.info("shutdown: cancelled %d queued job(s)", len(queued))
        return len(queued)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Cancel what is queued (`drain`, if it has not run yet), let running work finish (cancel it
        after `timeout`), stop the threads."""
        self.drain()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for job in list(self._running.values()):
            self.cancel(job, "the service is shutting down", ShuttingDown())
        for t in self._threads:
            t.join(10)
