"""Step 4: the adherence report. Each service loads the tiny model exactly as `--model tiny` does (the
BF16 service; the FP4 service with each backend that runs here), draws the 200 held-out prompts at
256x256 (seed = the prompt's number) for each step count, and the meaning checker scores them.

    python -m flux_api.tiny_train.adherence [--prompts 200] [--steps 4,8,16,25,28] [--services bf16,fp4:torchao-int8]
    python -m flux_api.tiny_train.adherence --device cuda --services bf16,fp4:torchao-fp8,fp4:torchao-int8  # a GPU

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


def load(service: str, device: str = "cpu"):
    """A loaded manager of `service` ("bf16", or "fp4:<backend>") over the tiny model, on `device`. On
    CUDA without compiling: meaning does not depend on it, and the run stays short."""
    from ..engine.services import MANAGERS
    from ..settings import BF16Settings, FP4Settings

    name, _, backend = service.partition(":")
    extra = {"backend": backend} if backend else {}
    if device != "cpu":
        extra["compile"] = "none"
    settings = (BF16Settings if name == "bf16" else FP4Settings)(model="tiny", device=device, warmup=False, **extra)
    manager = MANAGERS[name](settings)
    manager.load()
    return manager


def measure(manager, prompts, steps: int) -> tuple[dict, float]:
    from ..engine.types import GenerationParams
    from ..meaning import adherence

    replica = manager.replicas[0]
    pairs, t0 = [], time.perf_counter()
    for i, (text, spec) in enumerate(prompts):
        image = replica.run(GenerationParams(prompt=text, seed=i, width=256, height=256, num_inference_steps=steps,
                                             guidance_scale=manager.settings.default_guidance))
        pairs.append((spec, image))
    return adherence(pairs), (time.perf_counter() - t0) / len(prompts)


def measure_partial(manager, prompts, seeds: int, steps: int) -> dict:
    """One-attribute prompts, each with `seeds` seeds: per attribute said, the percentage of images that
    show it, and (`object`) the percentage in which an object is drawn at all."""
    from ..engine.types import GenerationParams
    from ..meaning import adherence, read_scene

    replica, pairs = manager.replicas[0], []
    for text, spec in prompts:
        for seed in range(seeds):
            pairs.append((spec, replica.run(GenerationParams(prompt=text, seed=seed, width=256, height=256,
                                                             num_inference_steps=steps,
                                                             guidance_scale=manager.settings.default_guidance))))
    drawn = sum(read_scene(image).colour is not None for _, image in pairs)
    return dict(adherence(pairs), object=round(100.0 * drawn / len(pairs), 1))


def main(argv=None) -> None:
    from .grammar import eval_prompts, partial_prompts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--steps", default="4,8,16,25,28")
    ap.add_argument("--services", default="bf16,fp4:torchao-int8")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU backends (fp4:torchao-fp8, ...)")
    ap.add_argument("--partial", type=int, default=0, help="seeds per one-attribute prompt for the second table (0: none)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    prompts = eval_prompts(a.prompts) if a.prompts else []
    rows, partial_rows, managers = [], [], [(service, load(service, a.device)) for service in a.services.split(",")]
    if prompts:
        print("| service | backend | steps | colour | shape | position | background | size | s/image |", flush=True)
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for service, manager in managers:
        for steps in (int(s) for s in a.steps.split(",")) if prompts else ():
            score, seconds = measure(manager, prompts, steps)
            row = dict(service=service.split(":")[0], backend=manager.backend.name, steps=steps, **score,
                       seconds_per_image=round(seconds, 3))
            rows.append(row)
            print(f"| {row['service']} | {row['backend']} | {steps} | {score['colour']} | {score['shape']} | "
                  f"{score['position']} | {score['background']} | {score['size']} | {seconds:.2f} |", flush=True)
    if a.partial:
        print(f"\none-attribute prompts ({len(partial_prompts())}), seeds 0..{a.partial - 1} each:", flush=True)
        print("| service | backend | steps | colour | shape | position | background | size | object drawn |", flush=True)
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for service, manager in managers:
        for steps in (int(s) for s in a.steps.split(",")) if a.partial else ():
            score = measure_partial(manager, partial_prompts(), a.partial, steps)
            partial_rows.append(dict(service=service.split(":")[0], backend=manager.backend.name, steps=steps, **score))
            print(f"| {service.split(':')[0]} | {manager.backend.name} | {steps} | {score['colour']} | {score['shape']} | "
                  f"{score['position']} | {score['background']} | {score['size']} | {score['object']} |", flush=True)
        manager.unload()
    if a.json:
        a.json.write_text(json.dumps(dict(prompts=a.prompts, size=256, rows=rows, **(
            dict(partial=dict(prompts=len(partial_prompts()), seeds=a.partial, rows=partial_rows)) if a.partial else {})),
            indent=1) + "\n")


if __name__ == "__main__":
    main()
