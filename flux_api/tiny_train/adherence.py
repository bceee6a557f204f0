"""Step 4: the adherence report. Each service loads the tiny model exactly as `--model tiny` does (the
BF16 service; the FP4 service with each backend that runs here), draws the 200 held-out prompts at
256x256 (seed = the prompt's number) for each step count, and the meaning checker scores them.

    python -m flux_api.tiny_train.adherence [--prompts 200] [--steps 4,8,16,25,28] [--services bf16,fp4:torchao-int8]
    python -m flux_api.tiny_train.adherence --device cuda --services bf16,fp4:torchao-fp8,fp4:torchao-int8  # a GPU
    python -m flux_api.tiny_train.adherence --model /tmp/exported --steps 25 --services bf16 --partial 10  # a candidate

Prints a markdown table (the one in docs/QUALITY.md) and, with --json, writes the numbers. With
`--partial N`, a second table: every prompt that says one attribute only ("a circle", "something
green"), drawn with seeds 0..N-1, per attribute the percentage that shows it, and how often an object
is drawn at all.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def load(service: str, device: str = "cpu", model: str = "tiny"):
    """A loaded manager of `service` ("bf16", or "fp4:<backend>") over `model` (the tiny model, or an
    exported model folder not yet shipped), on `device`. On CUDA without compiling: meaning does not
    depend on it, and the run stays short."""
    from ..engine.services import MANAGERS
    from ..settings import BF16Settings, FP4Settings

    name, _, backend = service.partition(":")
    extra = {"backend": backend} if backend else {}
    if device != "cpu":
        extra["compile"] = "none"
    settings = (BF16Settings if name == "bf16" else FP4Settings)(model=model, device=device, warmup=False, **extra)
    manager = MANAGERS[name](settings)
    manager.load()
    return manager


def _draw(manager, text: str, seed: int, steps: int):
    """One 256x256 image through the service's generation path, at its default guidance."""
    from ..engine.types import GenerationParams

    return manager.replicas[0].run(GenerationParams(prompt=text, seed=seed, width=256, height=256, num_inference_steps=steps,
                                                    guidance_scale=manager.settings.default_guidance))


def measure(manager, prompts, steps: int) -> tuple[dict, float]:
    """Held-out complete prompts, seed = the prompt's number: per attribute, the percentage that shows
    it, and the seconds an image took."""
    from ..meaning import adherence

    t0 = time.perf_counter()
    pairs = [(spec, _draw(manager, text, i, steps)) for i, (text, spec) in enumerate(prompts)]
    return adherence(pairs), (time.perf_counter() - t0) / len(prompts)


def measure_partial(manager, prompts, seeds: int, steps: int) -> dict:
    """One-attribute prompts, each with `seeds` seeds: per attribute said, the percentage of images that
    show it, and (`object`) the percentage in which an object is drawn at all."""
    from ..meaning import adherence, read_scene

    pairs = [(spec, _draw(manager, text, seed, steps)) for text, spec in prompts for seed in range(seeds)]
    drawn = sum(read_scene(image).colour is not None for _, image in pairs)
    return dict(adherence(pairs), object=round(100.0 * drawn / len(pairs), 1))


def _table(last_column: str) -> None:
    print(f"| service | backend | steps | colour | shape | position | background | size | {last_column} |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|", flush=True)


def _row(row: dict, last: str) -> dict:
    print(f"| {row['service']} | {row['backend']} | {row['steps']} | {row['colour']} | {row['shape']} | "
          f"{row['position']} | {row['background']} | {row['size']} | {last} |", flush=True)
    return row


def main(argv=None) -> None:
    from .grammar import eval_prompts, partial_prompts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=200, help="held-out complete prompts for the first table (0: none)")
    ap.add_argument("--steps", default="4,8,16,25,28")
    ap.add_argument("--services", default="bf16,fp4:torchao-int8")
    ap.add_argument("--model", default="tiny", help="the shipped tiny model, or a folder `export.py` wrote")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU backends (fp4:torchao-fp8, ...)")
    ap.add_argument("--partial", type=int, default=0, help="seeds per one-attribute prompt for the second table (0: none)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    step_counts = [int(s) for s in a.steps.split(",")]
    managers = {service: load(service, a.device, a.model) for service in a.services.split(",")}  # the tiny model: small
    runs = [(service.split(":")[0], manager, steps) for service, manager in managers.items() for steps in step_counts]
    rows, partial_rows = [], []
    if a.prompts:
        prompts = eval_prompts(a.prompts)
        _table("s/image")
        for service, manager, steps in runs:
            score, seconds = measure(manager, prompts, steps)
            rows.append(_row(dict(service=service, backend=manager.backend.name, steps=steps, **score,
                                  seconds_per_image=round(seconds, 3)), f"{seconds:.2f}"))
    if a.partial:
        print(f"\none-attribute prompts ({len(partial_prompts())}), seeds 0..{a.partial - 1} each:", flush=True)
        _table("object drawn")
        for service, manager, steps in runs:
            score = measure_partial(manager, partial_prompts(), a.partial, steps)
            partial_rows.append(_row(dict(service=service, backend=manager.backend.name, steps=steps, **score), score["object"]))
    for manager in managers.values():
        manager.unload()
    if a.json:
        partial = dict(partial=dict(prompts=len(partial_prompts()), seeds=a.partial, rows=partial_rows)) if a.partial else {}
        a.json.write_text(json.dumps(dict(prompts=a.prompts, size=256, rows=rows, **partial), indent=1) + "\n")


if __name__ == "__main__":
    main()
