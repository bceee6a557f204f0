"""Ray Serve (issue 15): one entry point in front of the FP4 and BF16 services, with replicas that
autoscale and fail over. The optional extra `ray` (pip install 'flux_api[ray]'); the plain services
never import this package.

- config.py   ServeConfig: the application's arguments (serve.yaml's `args`), checked before Ray starts
- model.py    FluxModelDeployment: one replica = one FluxModelManager (one pipeline), streaming progress
- engine.py   RayEngine: the EngineClient the ingress's routes use; jobs, events and pins live here
- app.py      the ingress deployment (the service's own FastAPI app) and build_app for `serve run`
"""
