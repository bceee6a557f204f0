"""`flux-api generate`: POST /jobs, a live progress bar from GET /jobs/{id}/events, the images written.

Only the fields given on the command line are sent, so the service's defaults and presets apply to the
rest; the service checks every value (its limits are configurable), and a bad one comes back as its
422, in one line. Ctrl-C while the job runs cancels it on the service (DELETE /jobs/{id}).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .client import Api, CLIError, INTERRUPTED, SERVER_ERROR, USAGE_ERROR, UNREACHABLE

EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
ENDED = ("done", "failed", "cancelled", "timed_out")


def parse_size(size: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", size)
    if not m:
        raise CLIError(f"--size {size!r} is not WIDTHxHEIGHT (e.g. 768x512)", USAGE_ERROR)
    return int(m[1]), int(m[2])


def parse_lora(spec: str) -> dict:
    """`name` or `name:weight` (the weight a number; the name itself has no ':')."""
    name, sep, weight = spec.rpartition(":")
    if not sep:
        return {"name": spec, "weight": 1.0}
    try:
        return {"name": name, "weight": float(weight)}
    except ValueError:
        raise CLIError(f"--lora {spec!r}: the weight after ':' must be a number (name or name:0.8)", USAGE_ERROR) from None


def output_format(out: Path | None, fmt: str | None) -> str | None:
    """The format to ask for: --format, else the one -o's extension names, else the service's default."""
    suffix = out.suffix.lower() if out is not None and not out.is_dir() else ""
    implied = FORMAT_OF_SUFFIX.get(suffix)
    if suffix and implied is None:
        raise CLIError(f"-o {out}: unknown image extension {suffix!r} (.png, .jpg, .jpeg or .webp)", USAGE_ERROR)
    if fmt is not None and implied is not None and fmt != implied:
        raise CLIError(f"-o {out} is a {implied} name but --format is {fmt}", USAGE_ERROR)
    return fmt or implied


def request_body(prompt: str, *, negative: str | None, seed: int | None, steps: int | None, guidance: float | None,
                 size: str | None, n: int | None, preset: str | None, loras: list[str], fmt: str | None,
                 true_cfg: float | None, first_block_cache: float | None = None) -> dict:
    body: dict = {"prompt": prompt}
    if size is not None:
        body["width"], body["height"] = parse_size(size)
    optional = {"negative_prompt": negative, "seed": seed, "num_inference_steps": steps, "guidance_scale": guidance,
                "num_images": n, "preset": preset, "output_format": fmt, "true_cfg_scale": true_cfg,
                "first_block_cache": first_block_cache}
    body.update({k: v for k, v in optional.items() if v is not None})
    if loras:
        body["loras"] = [parse_lora(s) for s in loras]
    return body


def output_paths(out: Path | None, count: int, job_id: str, fmt: str) -> list[Path]:
    """`-o out.png`: out.png for one image, out-1.png, out-2.png, ... for several. No -o (or -o a folder):
    flux-<first 8 characters of the job id>[-i].<ext>, in the current folder (or that one)."""
    if out is None or out.is_dir():
        folder, stem, suffix = (out or Path()), f"flux-{job_id[:8]}", EXTENSIONS.get(fmt, f".{fmt}")
    else:
        folder, stem, suffix = out.parent, out.stem if out.suffix else out.name, out.suffix or EXTENSIONS.get(fmt, f".{fmt}")
    if count == 1:
        return [folder / f"{stem}{suffix}"]
    return [folder / f"{stem}-{i}{suffix}" for i in range(1, count + 1)]


def write_images(result: dict, out: Path | None, job_id: str) -> list[tuple[int, Path]]:
    """Each image of a /generate body written to its path; (seed, path) pairs."""
    images = result.get("images") or [result["image"]]
    paths = output_paths(out, len(images), job_id, result.get("format", "png"))
    written = []
    for data, seed, path in zip(images, result["seeds"], paths):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(data))
        except OSError as e:
            raise CLIError(f"cannot write {path}: {e.strerror or e}") from None
        written.append((seed, path))
    return written


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("steps"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=console)


def _describe(state: dict) -> str:
    job = f"job {state['id'][:8]}"
    if state.get("state") == "queued":
        return f"{job} queued (position {state.get('position')})"
    if state.get("num_images", 1) > 1:
        return f"{job} image {state.get('image', 1)}/{state['num_images']}"
    return job


def follow(api: Api, created: dict, console: Console) -> dict:
    """The job's progress bar, from its event stream, until its result (the /generate body); a failed,
    cancelled or timed-out job is a CLIError with the service's reason."""
    job_id, seen = created["id"], dict(created)
    with _progress(console) as progress:
        task = progress.add_task(_describe(seen), total=created["total_steps"], completed=created["step"], eta="")
        for name, data in api.events(f"/jobs/{job_id}/events"):
            if name in ("state", "progress"):
                seen.update(data, id=job_id, **({"state": "running"} if name == "progress" else {}))
                eta = f"eta {data['eta_s']:.1f} s" if data.get("eta_s") is not None else ""
                progress.update(task, description=_describe(seen), completed=data["step"], total=data["total_steps"],
                                eta=eta)
            elif name == "result":
                progress.update(task, eta="")
                return data
            elif name == "error":
                raise CLIError(f"job {job_id} {data.get('state')}: {data.get('type')}: {data.get('message')}")
    # The stream ended without its last event (the connection was cut): the job's own state says the rest.
    job = api.json("GET", f"/jobs/{job_id}")
    if job["state"] == "done":
        return job["result"]
    if job["state"] in ENDED:
        err = job.get("error") or {}
        raise CLIError(f"job {job_id} {job['state']}: {err.get('type')}: {err.get('message')}")
    raise CLIError(f"the event stream of job {job_id} ended while it was {job['state']}; "
                   f"`flux-api jobs {job_id}` follows it", UNREACHABLE)


def cancel(api: Api, job_id: str, console: Console) -> None:
    """DELETE /jobs/{id}: a 200 is the service's promise that the job ends cancelled."""
    try:
        resp = api.request("DELETE", f"/jobs/{job_id}", ok=(200, 409))
    except CLIError as e:
        console.print(f"error: could not cancel job {job_id}: {e.message}", markup=False, highlight=False)
        return
    if resp.status_code == 409:
        state = (resp.json().get("error") or {}).get("details", {}).get("state", "ended")
        console.print(f"job {job_id} had already ended ({state}); nothing was cancelled", markup=False, highlight=False)
    else:
        console.print(f"cancelled job {job_id}", markup=False, highlight=False)


def generate(api: Api, body: dict, out: Path | None, console: Console) -> list[tuple[int, Path]]:
    """Submit, follow, write. Ctrl-C after the job was queued cancels it and exits with 130."""
    created = api.json("POST", "/jobs", ok=(202,), json=body)
    job_id = created["id"]
    console.print(f"job {job_id} {created['state']}", markup=False, highlight=False)
    try:
        result = follow(api, created, console)
    except KeyboardInterrupt:
        cancel(api, job_id, console)
        raise CLIError("", INTERRUPTED) from None  # the line above said it all
    if result is None:  # a done job always has its result; anything else is not this API
        raise CLIError(f"job {job_id} is done but has no result", SERVER_ERROR)
    return write_images(result, out, job_id)
