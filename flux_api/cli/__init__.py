"""`flux-api`, the command-line client of the HTTP API (Typer, with Rich's progress bar).

    flux-api serve fp4|bf16 [-g 0,1] [-p PORT] [--model SRC]   what start_api.sh / start_bf16_api.sh run
    flux-api generate "prompt" [-o out.png] [--seed S] [--steps N] [--size 768x512] [--lora name:0.8] ...
    flux-api status | loras | jobs JOB_ID | cancel JOB_ID

A pure HTTP client (httpx): it imports neither the engine nor torch, so it starts in a fraction of a
second and runs anywhere the service can be reached. `serve` only builds the service's command and
hands its process over to it.
"""

from .app import app, main

__all__ = ["app", "main"]
