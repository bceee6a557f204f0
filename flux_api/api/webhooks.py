"""Webhooks: POST /jobs's callback_url gets the job's final state when the job ends, signed, retried,
bounded, and never through an address the policy refuses (webhook_policy.py).

- Signed: `X-Flux-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">` with the
  `webhook_secret`, the timestamp (Unix seconds, fresh on each attempt) in `X-Flux-Timestamp`, so a
  receiver can refuse old or replayed deliveries; `X-Flux-Delivery-Id` is the same on every attempt of
  one delivery (de-duplication), `X-Flux-Attempt` counts them. The body is the same bytes every time.
- Retried on connection errors, timeouts, 5xx and 429 (after `webhook_backoff_s`, doubled each time,
  or a longer Retry-After), at most `webhook_max_attempts` times; a 2xx delivers; a 3xx (redirects are
  not followed), another 4xx or a refused address ends it at once. No attempt starts later than
  min(webhook_deadline_s, jobs_keep_s) after the job ended, nor after the job's record is dropped, and
  none runs past that: the record, where the attempts show (GET /jobs/{id}), outlives its delivery.
- Off the GPU's path: each delivery is an asyncio task on the event loop; the worker thread only
  schedules it (`EngineClient.on_job_finished`). A slow receiver holds up nothing but its own task.
- Connected to the checked address: the name is resolved and every address checked before each
  attempt; the request goes to that IP, with the original Host header and, for https, the host name as
  SNI and for certificate verification. A new client per attempt (no pooled connection made for one
  name is reused for another), `trust_env=False` (no proxy from the environment would connect instead).
- At shutdown (`close`, after the engine stopped, so every job has ended): a delivery waiting to retry
  makes its last attempt now; what is not delivered within `webhook_shutdown_s` is logged (WARNING).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import httpx

from .. import __version__
from ..errors import CallbackNotAllowed, JobNotFound
from ..webhook_policy import AddressPolicy, Resolver

log = logging.getLogger(__name__)

WAITING, DELIVERING, DELIVERED, FAILED = "waiting", "delivering", "delivered", "failed"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Flux-Signature value: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def without_query(url: httpx.URL) -> str:
    """The URL as shown and logged: no query string (it may carry the receiver's token)."""
    return str(url.copy_with(query=None, fragment=None))


@dataclass
class Delivery:
    """One job's callback: what GET /jobs/{id} shows of it (`view`), and its task."""

    job_id: str
    url: httpx.URL
    describe: Callable[[str], Awaitable[dict]]  # delivery id -> the payload (the job's final state)
    delivery_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = WAITING
    attempts: list = field(default_factory=list)
    error: str | None = None
    next_attempt: float | None = None  # time.monotonic() of the next attempt, while one is scheduled
    task: asyncio.Task | None = None
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # set at shutdown: stop waiting, try now

    def view(self) -> dict:
        wait = None if self.next_attempt is None else round(max(0.0, self.next_attempt - time.monotonic()), 3)
        return {"url": without_query(self.url), "delivery_id": self.delivery_id, "state": self.state,
                "attempts": list(self.attempts), "next_attempt_in_s": wait, "error": self.error}


@dataclass
class Outcome:
    delivered: bool = False
    retry: bool = False
    retry_after_s: float | None = None


class Webhooks:
    """The deliverer of one service. `register` (in POST /jobs, on the loop) after `check`; the engine's
    job-finished hook starts the delivery; `close` at shutdown."""

    def __init__(self, settings, engine, resolver: Resolver | None = None):
        self.settings = settings
        self.engine = engine
        self.policy = AddressPolicy.from_settings(settings, resolver)
        self._secret = settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active: dict[str, Delivery] = {}  # job id -> delivery not yet finished
        self._closing = False
        engine.on_job_finished(self._job_finished)

    # ------------------------------------------------------------------ in the request's path

    def check(self, url: str) -> httpx.URL:
        """CallbackNotAllowed (422) for what can be refused without the network: webhooks off, an IP literal
        in a refused range, a host outside the allow list where only it may be reached."""
        if self._secret is None:
            raise CallbackNotAllowed("webhooks are off on this service (no webhook_secret is set)", field="callback_url")
        parsed = httpx.URL(url)
        self.policy.check_url(parsed.host)
        return parsed

    def register(self, job, url: httpx.URL, describe: Callable[[str], Awaitable[dict]]) -> Delivery:
        """Attach a delivery to `job`; it starts when the job ends (at once if it already has)."""
        self._loop = asyncio.get_running_loop()
        delivery = Delivery(job.id, url, describe)
        job.extra["webhook"] = delivery
        self._active[job.id] = delivery
        # The job may have ended between its submit and now, before the hook could see the delivery: the
        # hook sets `finished` before it runs, so one of the two sees both (and _start runs once).
        if job.finished is not None:
            self._start(job)
        return delivery

    # ------------------------------------------------------------------ delivering

    def _job_finished(self, job) -> None:
        """The engine's hook, on the worker thread (or the loop): hand the job over to the loop."""
        if "webhook" in job.extra and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._start, job)
            except RuntimeError:  # the loop is closed: close() has logged what was left
                pass

    def _start(self, job) -> None:
        delivery = job.extra["webhook"]
        if delivery.task is None:
            delivery.task = asyncio.get_running_loop().create_task(self._deliver(delivery, job),
                                                                   name=f"webhook-{job.id}")

    def _deadline(self, job) -> float:
        return job.finished + min(self.settings.webhook_deadline_s, self.settings.jobs_keep_s)

    def _kept(self, job) -> bool:
        """The job is still readable with GET /jobs/{id}. At shutdown the engine has let go of every job:
        the last attempt is still made."""
        if self._closing:
            return True
        try:
            return self.engine.job(job.id) is job
        except JobNotFound:
            return False

    async def _deliver(self, d: Delivery, job) -> None:
        s = self.settings
        try:
            body = json.dumps(await d.describe(d.delivery_id), separators=(",", ":")).encode()
            deadline = self._deadline(job)
            wait = 0.0
            for n in range(1, s.webhook_max_attempts + 1):
                if wait:
                    if time.monotonic() + wait >= deadline:
                        d.error = f"gave up: the next attempt would start after the deadline ({d.error})"
                        break
                    d.next_attempt = time.monotonic() + wait
                    try:  # the backoff, cut short at shutdown
                        await asyncio.wait_for(d.hurry.wait(), wait)
                    except TimeoutError:
                        pass
                    d.next_attempt = None
                if not self._kept(job):
                    d.error = "gave up: the job's record was dropped (jobs_keep)"
                    break
                d.state = DELIVERING
                outcome = await self._attempt(d, body, n, min(s.webhook_timeout_s, deadline - time.monotonic()))
                if outcome.delivered:
                    d.state, d.error = DELIVERED, None
                    return
                d.state = WAITING
                if not outcome.retry or self._closing:
                    break
                wait = max(s.webhook_backoff_s * 2 ** (n - 1), outcome.retry_after_s or 0.0)
            d.state = FAILED
        except asyncio.CancelledError:
            d.state, d.next_attempt = FAILED, None
            d.error = "the service shut down before it was delivered" + (f" ({d.error})" if d.error else "")
            raise
        except Exception as e:  # noqa: BLE001 - a delivery that breaks must say so, and nothing else break
            log.exception("webhook for job %s failed", d.job_id)
            d.state, d.error = FAILED, f"{type(e).__name__}: {e}"
        finally:
            self._active.pop(d.job_id, None)
            if d.state == FAILED:
                log.warning("webhook for job %s to %s not delivered after %d attempt(s): %s", d.job_id,
                            without_query(d.url), len(d.attempts), d.error)

    async def _attempt(self, d: Delivery, body: bytes, n: int, timeout: float) -> Outcome:
        """One attempt, recorded on `d`: resolve and check, then POST to the checked address."""
        at, t0, address, status, outcome = time.time(), time.monotonic(), None, None, Outcome()
        url = d.url
        try:
            async with asyncio.timeout(max(0.001, timeout)):
                addresses = await self.policy.resolve(url.host, url.port or (443 if url.scheme == "https" else 80))
                timestamp = str(int(time.time()))
                headers = {"Host": url.netloc.decode("ascii"), "Content-Type": "application/json",
                           "User-Agent": f"flux_api/{__version__} webhook", "X-Flux-Timestamp": timestamp,
                           "X-Flux-Signature": signature(self._secret, timestamp, body),
                           "X-Flux-Job-Id": d.job_id, "X-Flux-Delivery-Id": d.delivery_id, "X-Flux-Attempt": str(n)}
                async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout) as client:
                    for i, address in enumerate(addresses):  # each checked address in turn, until one connects
                        try:
                            async with client.stream("POST", url.copy_with(host=address), content=body,
                                                     headers=headers, extensions={"sni_hostname": url.host}) as r:
                                status = r.status_code  # the answer's body is not read: only its status counts
                                retry_after = r.headers.get("retry-after", "")
                            break
                        except httpx.ConnectError:
                            if i == len(addresses) - 1:
                                raise
            if 200 <= status < 300:
                return self._record(d, at, t0, address, status, None, Outcome(delivered=True))
            if status == 429 or status >= 500:
                outcome = Outcome(retry=True, retry_after_s=float(retry_after) if retry_after.isdigit() else None)
                error = f"HTTP {status}"
            elif 300 <= status < 400:
                error = f"HTTP {status}: a redirect, not followed"
            else:
                error = f"HTTP {status}: not retried"
        except CallbackNotAllowed as e:
            error = e.message
        except TimeoutError:
            error, outcome = f"no answer within {timeout:.3g} s", Outcome(retry=True)
        except (httpx.HTTPError, OSError) as e:
            error, outcome = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, Outcome(retry=True)
        return self._record(d, at, t0, address, status, error, outcome)

    @staticmethod
    def _record(d: Delivery, at, t0, address, status, error, outcome: Outcome) -> Outcome:
        d.attempts.append({"at": round(at, 3), "duration_ms": round((time.monotonic() - t0) * 1e3, 2),
                           "address": address, "status_code": status, "error": error})
        d.error = error
        return outcome

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """After the engine has stopped: every delivery still waiting for its backoff makes its last attempt
        now; those not delivered within webhook_shutdown_s are cancelled. Each undelivered one is logged
        (WARNING: job id, URL without its query, attempts, why)."""
        self._closing = True
        await asyncio.sleep(0)  # the hooks of the last jobs to end, scheduled from worker threads, run first
        for job_id, d in list(self._active.items()):
            if d.task is None:  # its job never ended (the engine's stop gave up on it)
                self._active.pop(job_id)
                d.state, d.error = FAILED, "the service shut down before the job ended"
                log.warning("webhook for job %s to %s not delivered: %s", job_id, without_query(d.url), d.error)
        tasks = [d.task for d in self._active.values()]
        for d in self._active.values():
            d.hurry.set()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.settings.webhook_shutdown_s)
        for t in late:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
