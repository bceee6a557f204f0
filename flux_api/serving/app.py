"""The Ray Serve application: two model deployments behind an ingress that is the service's own app.

`serve run config/serve.yaml` (or `serve run flux_api.serving.app:build_app`) calls `build_app` with
the YAML's `args` (ServeConfig). The ingress's FastAPI app is built in its replica by create_app, the
same function as the plain services', over a RayEngine: the same routes, errors, keys and limits.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..app import create_app
from ..settings import SETTINGS_CLASSES
from .config import ServeConfig
from .engine import RayEngine
from .model import FluxModelDeployment
from .routing import ReplicaView

DEPLOYMENT_NAMES = {"fp4": "FluxFP4", "bf16": "FluxBF16"}


@serve.ingress()  # the app is built in the replica (__serve_build_asgi_app__), from the arguments
class FluxIngress:
    def __init__(self, config: dict, **handles: DeploymentHandle):
        self.config = ServeConfig.model_validate(config)
        self.handles = handles

    def __serve_build_asgi_app__(self):
        c = self.config
        settings = SETTINGS_CLASSES[c.front](**{"model": c.model, **c.ingress_settings})
        view = ReplicaView(serve.get_replica_context().app_name, {s: DEPLOYMENT_NAMES[s] for s in self.handles},
                           c.replica_poll_s, {s: getattr(c, s).health_check_period_s for s in self.handles})
        cold = {s: getattr(c, s).cold_start_s for s in self.handles}
        ray_queue = {s: (getattr(c, s).max_ongoing_requests, getattr(c, s).max_queued_requests) for s in self.handles}
        return create_app(settings, engine=RayEngine(settings, self.handles, c.slots, view, cold, ray_queue))


def build_app(args: dict | None = None) -> serve.Application:
    """The application `serve run` deploys: args as in config/serve.yaml (ServeConfig)."""
    config = ServeConfig.model_validate(args or {})
    handles = {}
    for service in config.services():
        d: dict = getattr(config, service).model_dump()
        options = getattr(config, service).deployment_options()
        deployment = serve.deployment(FluxModelDeployment, name=DEPLOYMENT_NAMES[service]).options(**options)
        handles[service] = deployment.bind(service, {"model": config.model, **d["settings"]}, d["torch_threads"])
    ingress = serve.deployment(FluxIngress, name="FluxIngress").options(
        ray_actor_options={"num_cpus": config.ingress_num_cpus})
    return ingress.bind(config.model_dump(), **handles)
