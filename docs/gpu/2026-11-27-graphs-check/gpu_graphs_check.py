#!/usr/bin/env python3
"""CUDA graphs against the ordinary forward, on the tiny FLUX pipeline on a GPU (seconds):
bitwise-equal images, a second size, true CFG, then clear() (what a LoRA load does) and capture again.

    python scripts/gpu_graphs_check.py

A RECORD of the H100 run of 2026-11-27, not maintained code: see README.md next to it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

import torch  # noqa: E402

from flux_api.engine.graphs import GraphedForward  # noqa: E402
from flux_api.engine.tiny import build_random_pipeline  # noqa: E402


def main():
    pipe = build_random_pipeline("tiny", device="cuda", dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)

    def image(px, **kw):
        out = pipe("a red fox", width=px, height=px, num_inference_steps=4, output_type="np",
                   generator=torch.Generator("cpu").manual_seed(3), **kw).images[0]
        return out.tobytes()

    cases = [(256, {}), (384, {}), (256, {"negative_prompt": "blurry", "true_cfg_scale": 1.5})]
    eager = [image(px, **kw) for px, kw in cases]
    g = GraphedForward(pipe.transformer, max_graphs=2).install()
    results = {}
    results["graphed"] = [image(px, **kw) for px, kw in cases]
    g.clear()
    results["after_clear"] = [image(px, **kw) for px, kw in cases]
    g.clear()
    g.bypass = True
    results["bypass"] = [image(px, **kw) for px, kw in cases]
    ok = all(r == eager for r in results.values()) and g.failed is None and g.captures >= 4
    print(f"GRAPHS_CHECK {'PASS' if ok else 'FAIL'}: equal to eager: "
          f"{ {k: [a == b for a, b in zip(v, eager)] for k, v in results.items()} }; {g.status()}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
