"""`python -m flux_api fp4|bf16 [--host H] [--port P] [--model SRC] [--placement P]`: start one service under uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flux_api", description=__doc__)
    ap.add_argument("service", choices=["fp4", "bf16"])
    ap.add_argument("--host", help="bind address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, help="port (default 8000 for fp4, 8001 for bf16)")
    ap.add_argument("--model", help="'tiny', a local diffusers folder, or a Hugging Face repo id")
    ap.add_argument("--backend", help="fp4 only: auto, nunchaku, bnb-fp4, bnb-nf4, torchao-fp8, torchao-int8")
    ap.add_argument("--placement", help="auto, single, balanced, replicas or parallel (GPU placement)")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)

    from .settings import SETTINGS_CLASSES

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("model", args.model),
                                   ("placement", args.placement)) if v is not None}
    if args.backend is not None:
        if args.service != "fp4":
            ap.error("--backend is for the fp4 service")
        overrides["backend"] = args.backend
    try:
        settings = SETTINGS_CLASSES[args.service](**overrides)
    except ValidationError as e:
        prefix = SETTINGS_CLASSES[args.service].model_config.get("env_prefix", "")
        for err in e.errors():
            name = ".".join(str(p) for p in err["loc"])  # a union's branch too: precompute_modulation.bool
            env = f"{prefix}{str(err['loc'][0]).upper()}" if err["loc"] else prefix  # the variable that sets it
            print(f"invalid setting {name} ({env}): {err['msg']}", file=sys.stderr)
        return 2

    if settings.hub_endpoint:
        # diffusers and transformers download the pipeline's files without an endpoint argument: they
        # read HF_ENDPOINT, once, when huggingface_hub is imported, which happens below.
        os.environ["HF_ENDPOINT"] = settings.hub_endpoint

    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from .app import create_app
    from .logs import configure_logging
    from .server import EngineServer

    configure_logging(args.log_level.upper())
    app = create_app(settings)
    # uvicorn.run(), with a Server that starts the engine's shutdown the moment SIGTERM arrives (server.py)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            log_level=args.log_level, timeout_graceful_shutdown=30)
    server = EngineServer(config, app.state.engine)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
