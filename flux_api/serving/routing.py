"""Where `service=auto` sends a request: the deployment with the shorter expected wait.

The wait of a deployment, as the ingress can know it: the requests it has routed there and not yet seen
finish, shared among the replicas that run, times one job's drawing time there (measured, a moving
average); a deployment with no running replica (scaled to zero, or its replica dead and not yet
replaced) first needs a cold start (`cold_start_s`); one whose replicas cannot start (Ray calls it
UNHEALTHY or DEPLOY_FAILED) is routed around. The replica counts come from Ray Serve's controller
(serve.status()), polled by ReplicaView: Ray notices a dead replica at its next health check.
"""

from __future__ import annotations

import logging
import math
import threading
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

    def __init__(self, app_name: str, deployments: dict[str, str], period_s: float = 1.0):
        self.app_name, self.deployments, self.period_s = app_name, deployments, period_s
        self.replicas = {s: Replicas() for s in deployments}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        from ray import serve

        app = serve.status().applications.get(self.app_name)
        if app is None:
            return
        for service, name in self.deployments.items():
            d = app.deployments.get(name)
            if d is not None:
                self.replicas[service] = Replicas(running=int(d.replica_states.get("RUNNING", 0)), status=getattr(d.status, "value", str(d.status)))

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
