"""How `status`, `loras` and `jobs` print what the service answered: short lines for people (`--json` gives
the answers themselves, for scripts). Every field is read with .get: an older or newer service that
lacks one still prints the rest."""

from __future__ import annotations

from rich.table import Table


def _names(items) -> str:
    return ", ".join(f"{i.get('name')}" + (f" ({i['weight']:g})" if isinstance(i.get("weight"), (int, float)) else "")
                     for i in items or []) or "none"


def health_text(health: dict) -> str:
    text = health.get("status", "?")
    if health.get("phase") and health.get("phase") != text:
        text += f" (phase {health['phase']})"
    if health.get("error"):
        text += f": {health['error']}"
    return text


def status_lines(url: str, health: dict, st: dict) -> list[tuple[str, str]]:
    model, placement, queue, lora = (st.get(k) or {} for k in ("model", "placement", "queue", "lora"))
    precision = st.get("precision") or {}
    backend = st.get("backend") or "?"
    if precision.get("backend_reason"):
        backend += f": {precision['backend_reason']}"
    where = f"{placement.get('mode', '?')} on {', '.join(placement.get('devices') or ['?'])}"
    if placement.get("reason"):
        where += f" ({placement['reason']})"
    return [
        ("service", f"flux-{st.get('service', '?')} at {url}"),
        ("health", health_text(health)),
        ("state", f"{st.get('state', '?')}" + (f", loaded in {st['load_seconds']} s" if st.get("load_seconds") else "")),
        ("model", f"{model.get('spec', '?')}" + (f" ({model['location']})" if model.get("location") else "")),
        ("backend", backend),
        ("placement", where),
        ("queue", f"{queue.get('queued', '?')} queued, {queue.get('running', '?')} running "
                  f"(at most {queue.get('max_queued', '?')} queued)"),
        ("loras", f"pinned: {_names(lora.get('pinned'))}; loaded: {_names(lora.get('loaded'))}"),
    ]


def loras_table(body: dict) -> Table:
    pinned = {p.get("name") for p in body.get("pinned") or []}
    loaded = {p.get("name") for p in body.get("loaded") or []}
    table = Table(title=f"LoRAs in {body.get('lora_dir', '?')}", title_justify="left", box=None, pad_edge=False)
    for col in ("name", "rank", "size", "state"):
        table.add_column(col, justify="right" if col in ("rank", "size") else "left")
    for item in body.get("available") or []:
        name = item.get("name", "?")
        size = item.get("size_bytes")
        state = ", ".join(s for s, on in (("pinned", name in pinned), ("loaded", name in loaded)) if on)
        table.add_row(name, str(item.get("rank", "?")), f"{size / 2**20:.1f} MiB" if size is not None else "?", state)
    return table


def jobs_table(jobs: list[dict]) -> Table:
    table = Table(title="jobs on record, newest first", title_justify="left", box=None, pad_edge=False)
    for col in ("id", "state", "steps", "images", "error"):
        table.add_column(col, justify="right" if col in ("steps", "images") else "left")
    for job in jobs:
        err = job.get("error") or {}
        table.add_row(job.get("id", "?"), job.get("state", "?"), f"{job.get('step', '?')}/{job.get('total_steps', '?')}",
                      str(job.get("num_images", "?")), err.get("type", ""))
    return table


def job_lines(job: dict) -> list[tuple[str, str]]:
    lines = [("job", job.get("id", "?")), ("state", job.get("state", "?"))]
    if job.get("state") == "queued":
        lines.append(("position", str(job.get("position"))))
    lines.append(("steps", f"{job.get('step', '?')}/{job.get('total_steps', '?')}"
                           + (f", eta {job['eta_s']:.1f} s" if job.get("eta_s") is not None else "")))
    if (job.get("num_images") or 1) > 1:
        lines.append(("image", f"{job.get('image')}/{job['num_images']}"))
    if job.get("error"):
        lines.append(("error", f"{job['error'].get('type')}: {job['error'].get('message')}"))
    if job.get("result"):
        r = job["result"]
        lines.append(("seeds", ", ".join(map(str, r.get("seeds") or [r.get("seed")]))))
        lines.append(("size", f"{r.get('width')}x{r.get('height')} {r.get('format')}, {r.get('num_inference_steps')} steps"))
    return lines


def without_images(job: dict) -> dict:
    """A job body for --json, its base64 images left out (-o writes them)."""
    if not job.get("result"):
        return job
    result = {k: v for k, v in job["result"].items() if k not in ("image", "images")}
    return {**job, "result": result}
