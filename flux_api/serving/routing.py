"""Where `service=auto` sends a request: the deployment with the shorter expected wait.

The wait of a deployment, as the ingress can know it: the requests it has routed there and not yet seen
finish, shared among the replicas that run, times one job's drawing time there (measured, a moving
average); a deployment with no running replica (scaled to zero, or its replica dead and not yet
replaced) first needs a cold start (`cold_start_s`); one whose replicas cannot start (Ray calls it
UNHEALTHY or DEPLOY_FAILED) is routed around. The replica counts come from Ray Serve's controller
(serve.status()), polled by ReplicaView. Ray notices a dead replica only at its next health check, so
when a call of the ingress meets one first (`lost`), the view counts one replica fewer until the
controller's count drops too, or for at most two health-check periods.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)
BROKEN = ("UNHEALTHY", "DEPLOY_FAILED")  # Ray's DeploymentStatus values where no replica comes soon


@dataclass
class Replicas:
    """One deployment as the controller last reported it."""

    running: int = 1  # until the first report: as if one ran
    status: str = "HEALTHY"


def expected_wait_s(waiting: int, replicas: Replicas, job_s: float, cold_start_s: float) -> float:
    """Seconds until a new request to this deployment starts drawing (rough, and only for comparing)."""
    if replicas.running == 0:
        if replicas.status in BROKEN:
            return math.inf
        return cold_start_s + waiting * job_s  # one replica comes up, then the queue drains through it
    return waiting / replicas.running * job_s


def pick(waits: dict[str, float]) -> str:
    """The service with the shortest wait; the first listed on a tie."""
    return min(waits, key=lambda s: waits[s])


class ReplicaView:
    """Running replicas per service, polled from Ray Serve's controller every `period_s` on a thread."""

    def __init__(self, app_name: str, deployments: dict[str, str], period_s: float = 1.0,
                 health_check_s: dict[str, float] | None = None):
        self.app_name, self.deployments, self.period_s = app_name, deployments, period_s
        self.health_check_s = {s: 10.0 for s in deployments} | (health_check_s or {})
        self.reported = {s: Replicas() for s in deployments}  # the controller's last word
        self._lost: dict[str, tuple[int, float]] = {}  # service -> (its reported count then, until when)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def replicas(self) -> dict[str, Replicas]:
        """The controller's counts, less one replica a call saw die that the controller still counts."""
        now, view = time.monotonic(), {}
        with self._lock:
            for service, r in self.reported.items():
                lost = self._lost.get(service)
                if lost is not None and (r.running < lost[0] or now > lost[1]):
                    del self._lost[service]  # the controller noticed (or should have by now)
                    lost = None
                view[service] = r if lost is None else Replicas(max(0, r.running - 1), r.status)
        return view

    def lost(self, service: str) -> None:
        """A call met a dead replica of `service`, which the controller may not have noticed yet."""
        with self._lock:
            if service not in self._lost:
                self._lost[service] = (self.reported[service].running,
                                       time.monotonic() + 2 * self.health_check_s[service] + self.period_s)

    def poll(self) -> None:
        from ray import serve

        app = serve.status().applications.get(self.app_name)
        if app is None:
            return
        for service, name in self.deployments.items():
            d = app.deployments.get(name)
            if d is not None:
                with self._lock:
                    self.reported[service] = Replicas(running=int(d.replica_states.get("RUNNING", 0)),
                                                      status=getattr(d.status, "value", str(d.status)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ray-replica-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - the controller busy or restarting: keep the last view
                log.warning("could not read the replica counts from Ray Serve: %s: %s", type(e).__name__, e)
            self._stop.wait(self.period_s)
