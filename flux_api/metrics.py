"""Prometheus metrics of one service (prometheus-client), in a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .engine.scheduler import DONE, Job

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)


class _GPUMemory:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        g = GaugeMetricFamily("flux_gpu_memory_bytes", "GPU memory by device", labels=["device", "kind"])
        for d in self.engine.devices():
            if "total_mib" not in d:
                continue
            for kind in ("total", "free", "allocated", "peak_allocated"):
                g.add_metric([d["device"], kind], d[f"{kind}_mib"] * 2**20)
        yield g


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine):
        """`engine`: an EngineClient (its counts, devices and finished jobs are observed)."""
        r = self.registry = CollectorRegistry()
        self.requests = Counter("flux_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r)
        self.queue_wait = Histogram("flux_queue_wait_seconds", "Time a generation waited for a replica", buckets=_SECONDS, registry=r)
        self.inference = Histogram("flux_inference_seconds", "Time a generation ran on a replica", buckets=_SECONDS, registry=r)
        self.images = Counter("flux_images_generated", "Images generated", registry=r)
        self.jobs = Counter("flux_jobs_finished", "Generations finished, by final state", ["state"], registry=r)
        queued = Gauge("flux_queue_depth", "Generations waiting for a replica", registry=r)
        queued.set_function(lambda: engine.counts()["queued"])
        running = Gauge("flux_generations_running", "Generations running now", registry=r)
        running.set_function(lambda: engine.counts()["running"])
        ready = Gauge("flux_model_ready", "1 when the model is loaded and can generate", registry=r)
        ready.set_function(lambda: 1.0 if engine.health()["ready"] else 0.0)
        # The promise that no live request compiles: 0 once warm (NaN where the engine cannot know).
        compiles = Gauge("flux_compiles_after_warmup", "torch.compile graphs compiled after the warm-up (on live "
                         "requests); should stay 0", registry=r)
        compiles.set_function(lambda: float(engine.counts().get("compiles_after_warmup") or 0)
                              if "compiles_after_warmup" in engine.counts() else float("nan"))
        r.register(_GPUMemory(engine))
        engine.on_job_finished(self.observe_job)

    def observe_job(self, job: Job) -> None:
        self.jobs.labels(job.state).inc()
        if job.started is not None and job.replica is not None:
            self.queue_wait.observe(job.started - job.created)
        if job.state == DONE:
            self.inference.observe(job.finished - job.started)
            self.images.inc()

    def observe_request(self, method: str, route: str, status: int) -> None:
        self.requests.labels(method, route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
