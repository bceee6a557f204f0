"""The `flux-api` commands (Typer). Each command runs inside `handled`: every failure is one line on
stderr, `error: ...`, and an exit status that says what kind (client.py), never a traceback."""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import generate as gen
from . import show
from .client import DEFAULT_URL, INTERRUPTED, SERVER_ERROR, USAGE_ERROR, Api, CLIError, body_of
from .serve import BadGpus, serve_command, visible_gpu_count

app = typer.Typer(
    name="flux-api", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="A command-line client of the flux_api services: generate images with a progress bar, see the "
         "service's status, its LoRAs and jobs; `serve` starts a service.")

# --- the options every client command shares -----------------------------------------------------------
Server = Annotated[str, typer.Option("--server", "-s", envvar="FLUX_API_URL", metavar="URL",
                                     help="The service (the BF16 one is on :8001).")]
ApiKey = Annotated[Optional[str], typer.Option("--api-key", envvar="FLUX_API_KEY", show_default=False,
                                               help="Sent as `Authorization: Bearer <key>`.")]
Timeout = Annotated[float, typer.Option("--timeout", envvar="FLUX_API_TIMEOUT", min=0.1, metavar="SECONDS",
                                        help="How long to wait for an answer (a job's event stream: as long as the job).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the service's answers as JSON.")]


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def say(text: str, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def handled(command):
    """The command, with a CLIError (and a Ctrl-C outside a job) turned into a line and an exit status."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CLIError as e:
            if e.message:
                say(f"error: {e.message}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            say("interrupted", err=True)
            raise typer.Exit(INTERRUPTED) from None
    return run


def print_pairs(pairs: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        say(f"{key:<{width}}  {value}")


class ImageFormat(str, Enum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"


# --- generate -------------------------------------------------------------------------------------------
@app.command()
@handled
def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="What to draw.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The file (out.png); with -n 2: out-1.png, "
                   "out-2.png. A folder: flux-<job>.png in it. Default: flux-<job>.png here.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the first image (image i: seed + i - 1). Default: random.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps.")] = None,
    size: Annotated[Optional[str], typer.Option(metavar="WxH", help="Width x height, e.g. 768x512.")] = None,
    negative: Annotated[Optional[str], typer.Option(help="Negative prompt (true CFG: doubles the cost).")] = None,
    lora: Annotated[Optional[list[str]], typer.Option(metavar="NAME[:WEIGHT]",
                    help="A LoRA for this request; repeat for several.")] = None,
    n: Annotated[Optional[int], typer.Option("-n", "--num-images", help="How many images.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="A named parameter set (see GET /presets).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale.")] = None,
    true_cfg: Annotated[Optional[float], typer.Option(help="True CFG scale, with --negative.")] = None,
    first_block_cache: Annotated[Optional[float], typer.Option(
        metavar="THRESHOLD", help="First Block Cache (0-1]: faster, lossy; the fast preset sets it.")] = None,
    fmt: Annotated[Optional[ImageFormat], typer.Option("--format", help="Image format (default: -o's extension, "
                   "else the service's).")] = None,
    server: Server = DEFAULT_URL, api_key: ApiKey = None, timeout: Timeout = 60.0,
) -> None:
    """Generate images: a live progress bar, then each image's seed and file.

    Ctrl-C while it runs cancels the job on the service."""
    body = gen.request_body(prompt, negative=negative, seed=seed, steps=steps, guidance=guidance, size=size, n=n,
                            preset=preset, loras=lora or [], fmt=gen.output_format(out, fmt and fmt.value),
                            true_cfg=true_cfg, first_block_cache=first_block_cache)
    with Api(server, api_key, timeout) as api:
        written = gen.generate(api, body, out, stderr())
    for seed_used, path in written:
        say(f"seed {seed_used}: {path}")


# --- status, loras, jobs, cancel -------------------------------------------------------------------------
@app.command()
@handled
def status(server: Server = DEFAULT_URL, api_key: ApiKey = None, timeout: Timeout = 60.0, as_json: AsJson = False) -> None:
    """The service's health and model status (GET /health, GET /model-status).

    Exit status 0 when it can generate, 1 when it cannot yet (loading) or any more (failed)."""
    with Api(server, api_key, timeout) as api:
        resp = api.request("GET", "/health", ok=(200, 503))
        health = body_of(resp, api.url)
        model_status = api.json("GET", "/model-status")
    if as_json:
        say(json.dumps({"health": health, "model_status": model_status}, indent=2))
    else:
        print_pairs(show.status_lines(api.url, health, model_status))
    if resp.status_code != 200:
        raise typer.Exit(SERVER_ERROR)


@app.command()
@handled
def loras(server: Server = DEFAULT_URL, api_key: ApiKey = None, timeout: Timeout = 60.0, as_json: AsJson = False) -> None:
    """The LoRA folder (GET /loras): each file's rank and size, and which are pinned or loaded."""
    with Api(server, api_key, timeout) as api:
        body = api.json("GET", "/loras")
    if as_json:
        say(json.dumps(body, indent=2))
    elif not body.get("available"):
        say(f"no LoRAs in {body.get('lora_dir', '?')}")
    else:
        Console(soft_wrap=True).print(show.loras_table(body))


@app.command()
@handled
def jobs(
    job_id: Annotated[Optional[str], typer.Argument(metavar="[JOB_ID]", help="The id `generate` printed; "
                                                    "without it, the jobs on record, newest first.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many jobs in the list.")] = 20,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write a done job's images (as generate does).")] = None,
    server: Server = DEFAULT_URL, api_key: ApiKey = None, timeout: Timeout = 60.0, as_json: AsJson = False,
) -> None:
    """The jobs on record (GET /jobs), or one job (GET /jobs/{id}): its state, progress, error or seeds."""
    if job_id is None:
        if out is not None:
            raise CLIError("-o writes one job's images: give its id", USAGE_ERROR)
        with Api(server, api_key, timeout) as api:
            listed = api.json("GET", "/jobs", params={"limit": limit})
        if as_json:
            say(json.dumps(listed, indent=2))
        elif not listed.get("jobs"):
            say("no jobs on record")
        else:
            Console(soft_wrap=True).print(show.jobs_table(listed["jobs"]))
        return
    with Api(server, api_key, timeout) as api:
        job = api.json("GET", f"/jobs/{job_id}")
    if as_json:
        say(json.dumps(show.without_images(job), indent=2))
    else:
        print_pairs(show.job_lines(job))
    if out is not None:
        if not job.get("result"):
            raise CLIError(f"job {job_id} is {job.get('state')}: it has no images to write")
        for seed_used, path in gen.write_images(job["result"], out, job_id):
            say(f"seed {seed_used}: {path}")


@app.command()
@handled
def cancel(job_id: Annotated[str, typer.Argument(metavar="JOB_ID")], server: Server = DEFAULT_URL,
           api_key: ApiKey = None, timeout: Timeout = 60.0) -> None:
    """Cancel a job (DELETE /jobs/{id}): a queued one at once, a running one at its next step."""
    with Api(server, api_key, timeout) as api:
        api.request("DELETE", f"/jobs/{job_id}")
    say(f"cancelled job {job_id}")


# --- serve ----------------------------------------------------------------------------------------------
class Service(str, Enum):
    fp4 = "fp4"
    bf16 = "bf16"


@app.command()
@handled
def serve(
    service: Annotated[Service, typer.Argument(help="fp4 (quantized, port 8000) or bf16 (full precision, port 8001).")],
    gpus: Annotated[Optional[str], typer.Option("-g", "--gpus", metavar="GPUS",
                    help="GPU indices, e.g. 0 or 0,1 (sets CUDA_VISIBLE_DEVICES; default: all GPUs).")] = None,
    port: Annotated[Optional[int], typer.Option("-p", "--port", help="Port (default 8000 for fp4, 8001 for bf16).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default 127.0.0.1; 0.0.0.0 exposes the service).")] = None,
    model: Annotated[Optional[str], typer.Option(metavar="SRC", help="'tiny', a local diffusers folder, or a Hugging "
                     "Face repo id (default black-forest-labs/FLUX.1-dev).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="fp4 only: auto, nunchaku, bnb-fp4, bnb-nf4, torchao-fp8, "
                       "torchao-int8.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command instead of running it.")] = False,
) -> None:
    """Start a service: what ./start_api.sh (fp4) and ./start_bf16_api.sh (bf16) run.

    Every other setting: environment variables FLUX_FP4_<NAME> / FLUX_BF16_<NAME> (see README.md)."""
    try:
        launch = serve_command(service.value, gpus, port, host, model, backend,
                               gpu_count=visible_gpu_count() if gpus is not None else None)
    except (BadGpus, ValueError) as e:
        raise CLIError(str(e), USAGE_ERROR) from None
    if dry_run:
        say(launch.shell())
        return
    visible = {**os.environ, **launch.env}.get("CUDA_VISIBLE_DEVICES", "<all>")
    say(f"starting the {service.value} service (CUDA_VISIBLE_DEVICES={visible})", err=True)  # as launch.sh says
    try:
        os.execvpe(launch.argv[0], launch.argv, {**os.environ, **launch.env})  # the service replaces this process
    except OSError as e:
        raise CLIError(f"cannot start {launch.argv[0]}: {e.strerror or e}", SERVER_ERROR) from None


def main(argv: list[str] | None = None) -> int:
    """The console script. Anything unforeseen is one line too (FLUX_API_DEBUG=1 shows the traceback)."""
    try:
        app(args=argv, prog_name="flux-api", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # a bug in the CLI, not the service's answer
        if os.environ.get("FLUX_API_DEBUG"):
            raise
        say(f"error: unexpected {type(e).__name__}: {e} (FLUX_API_DEBUG=1 shows the traceback)", err=True)
        return SERVER_ERROR
    return 0
