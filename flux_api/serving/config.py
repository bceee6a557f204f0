"""The Ray Serve application's arguments (config/serve.yaml's `args`), checked before anything starts.
No Ray import here: the settings docs and tests read it without Ray."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SERVICES = ("fp4", "bf16")


class DeploymentConfig(BaseModel):
    """One model deployment (FP4 or BF16): its replicas, their resources and its backpressure."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 lets a deployment nobody uses scale to none.")
    max_replicas: int = Field(1, ge=1, description="Most replicas the autoscaler starts.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start (default: min_replicas).")
    target_ongoing_requests: float = Field(
        1.0, gt=0, description="The autoscaler's target of requests in flight per replica (one pipeline draws one "
        "image at a time, so 1 keeps the queue in front of the replicas short).")
    max_ongoing_requests: int = Field(1, ge=1, description="Requests one replica holds at once (running + queued in it).")
    max_queued_requests: int = Field(
        8, ge=-1, description="Requests waiting for a replica before Ray refuses more; the ingress refuses (429 with "
        "Retry-After, on the POST) past running replicas x max_ongoing_requests + this; -1: no bound.")
    upscale_delay_s: float = Field(2.0, ge=0, description="Load must last this long before a replica is added.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Idle time before a replica is removed.")
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="Idle time before the last replica is removed (min_replicas 0); default: downscale_delay_s.")
    look_back_period_s: float = Field(
        30.0, gt=0, description="The window over which the autoscaler averages requests in flight (Ray's default 30 s).")
    metrics_interval_s: float = Field(
        10.0, gt=0, description="How often the ingress reports its requests in flight to the autoscaler (Ray's default "
        "10 s; a shorter one reacts sooner; Ray 2.60 still reads this field, though it calls it deprecated).")
    health_check_period_s: float = Field(
        10.0, gt=0, description="How often Ray checks each replica; a dead one is noticed (and replaced, and routed "
        "around by auto) within about this long.")
    cold_start_s: float = Field(
        60.0, ge=0, description="The ingress's estimate of starting a replica and loading its model: `auto` counts it "
        "as wait for a deployment with no running replica (scaled to zero, or its replica dead and not yet replaced).")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica: 1 on a GPU machine, 0 with the tiny model on the CPU.")
    num_cpus: float = Field(1, gt=0, description="CPUs per replica (fractions let several share a small machine).")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads torch uses in a replica (Ray sets OMP_NUM_THREADS to the replica's "
        "whole num_cpus, 1 for a fraction). On the CPU the thread count changes a float sum's order, so the same "
        "seed gives the plain service's bytes only with its thread count.")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="The service's settings (flux_api.settings; FLUX_FP4_*/FLUX_BF16_* env too).")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def deployment_options(self) -> dict:
        """Ray Serve's options for the deployment (serve.deployment(...).options(**these))."""
        autoscaling = {
            "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
            "initial_replicas": self.initial_replicas if self.initial_replicas is not None else self.min_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
            "downscale_to_zero_delay_s": self.downscale_to_zero_delay_s, "look_back_period_s": self.look_back_period_s,
        }
        if self.metrics_interval_s != 10.0:  # Ray warns (deprecated) whenever the field is set: only when changed
            autoscaling["metrics_interval_s"] = self.metrics_interval_s
        return {
            "autoscaling_config": autoscaling,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }


class ServeConfig(BaseModel):
    """The whole application: the ingress (the HTTP front) and the two model deployments."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="The model every service loads (a setting of each; `tiny` on the CPU).")
    front: Literal["fp4", "bf16"] = Field(
        "bf16", description="Whose settings the ingress's request limits, defaults and title take.")
    ingress_settings: dict[str, Any] = Field(
        default_factory=dict, description="The ingress's settings (keys, body limit, CORS, queue_size, jobs_keep...).")
    ingress_num_cpus: float = Field(0.25, gt=0, description="CPUs for the ingress replica.")
    slots: int = Field(8, ge=1, description="Generations the ingress has in flight to the deployments at once; more "
                       "wait in the ingress's queue (queue_size; 429 when full).")
    replica_poll_s: float = Field(1.0, gt=0, description="How often the ingress asks Ray Serve's controller how many "
                                  "replicas of each deployment run (what `auto` routes by).")
    fp4: DeploymentConfig | None = Field(default_factory=DeploymentConfig, description="The FP4 deployment; null: none.")
    bf16: DeploymentConfig | None = Field(default_factory=DeploymentConfig, description="The BF16 deployment; null: none.")

    @model_validator(mode="after")
    def _some_service(self):
        if not self.services():
            raise ValueError("at least one of fp4 and bf16 must be deployed")
        return self

    def services(self) -> tuple[str, ...]:
        return tuple(s for s in SERVICES if getattr(self, s) is not None)
