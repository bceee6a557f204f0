"""Stock diffusers, the baseline: FluxPipeline, eager, as its docs show it (no HTTP), and its peers
(`stock+compile`, `stock+fp8`: what a user builds from it in a few lines), each in a child process
(`python -m flux_api.bench --stock-child MODEL`) so that it gives its memory back."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time

from ..service_process import ROOT
from .measure import PROMPT


def stock_child(model: str, sizes: list[int], steps: int, images: int = 0, options: tuple[str, ...] = ()) -> dict:
    """Stock diffusers, as its docs show it; with `options` (targets.STOCK_OPTIONS) as a user would speed
    it up in a few lines. The warm-up call at each size pays the compiling, not the timed calls."""
    import torch
    from diffusers import FluxPipeline

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    t = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(model, dtype=dtype)
    pipe = pipe.to("cuda") if cuda else pipe
    pipe.set_progress_bar_config(disable=True)
    if "fp8" in options:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    if "compile" in options or "fp8" in options:
        pipe.transformer = torch.compile(pipe.transformer, fullgraph=True)
    out = {"load_s": round(time.perf_counter() - t, 2), "options": list(options), "sizes": {}}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for px in sizes:
        t = time.perf_counter()
        pipe(PROMPT, width=px, height=px, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        out.setdefault("warmup_s", {})[px] = round(time.perf_counter() - t, 2)
        ts = []
        for _ in range(3):
            sync()
            t = time.perf_counter()
            img = pipe(PROMPT, width=px, height=px, num_inference_steps=steps, guidance_scale=3.5,
                       generator=torch.Generator().manual_seed(1)).images[0]
            sync()
            ts.append(round(time.perf_counter() - t, 3))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out["sizes"][px] = {"latency_s": min(ts), "all_latency_s": ts, "png_b64": base64.b64encode(buf.getvalue()).decode()}
    if images > 1:  # is batching n images in one call faster than n calls? (issue 13: batch only where it is)
        px = max(sizes)
        sync()
        t = time.perf_counter()
        pipe(PROMPT, width=px, height=px, num_inference_steps=steps, num_images_per_prompt=images,
             generator=torch.Generator().manual_seed(1))
        sync()
        batched = time.perf_counter() - t
        out["batching"] = {"px": px, "n": images, "batched_s": round(batched, 3),
                           "sequential_s": round(images * out["sizes"][px]["latency_s"], 3),
                           "batched_vs_sequential": round(batched / (images * out["sizes"][px]["latency_s"]), 3)}
    if cuda:
        out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_stock(model: str, sizes: list[int], steps: int, images: int = 0, options: tuple[str, ...] = ()) -> dict:
    """`stock_child` in a child process; its result, or {"error": its stderr tail}."""
    p = subprocess.run([sys.executable, "-m", "flux_api.bench", "--stock-child", model, "--sizes", *map(str, sizes),
                        "--steps", str(steps), "--images", str(images), "--stock-options", ",".join(options)],
                       cwd=ROOT, capture_output=True, text=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("STOCK ")]
    if not line:
        return {"error": p.stderr[-3000:]}
    res = json.loads(line[0][6:])
    res["sizes"] = {int(k): v for k, v in res["sizes"].items()}  # JSON made the sizes strings
    res["warmup_s"] = {int(k): v for k, v in res.get("warmup_s", {}).items()}
    return res
