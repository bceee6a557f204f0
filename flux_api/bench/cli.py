"""The benchmark: each service and backend end to end through HTTP (a real uvicorn process per
target, an HTTP client), against stock diffusers in the same run. Prints a table and writes JSON.

    python -m flux_api.bench --model tiny --sizes 256 --steps 4                      # CPU, seconds
    python -m flux_api.bench --model full --targets stock,bf16,bf16+compile --out bench.json   # a GPU
    python -m flux_api.bench --model full --targets bf16+single,bf16+replicas,bf16+balanced \\
        --sizes 1024 --concurrency 1 2 4                                             # 2 GPUs: placement
    python -m flux_api.bench --model full --targets stock,bf16+single,bf16+parallel,fp4+single,fp4+parallel \
        --sizes 1024 --steps 28                                                      # 2 GPUs: one image sooner

`--model full` builds the full-size random-weight FLUX.1-dev and two random LoRAs first (into
/dev/shm when it fits; flux_api.random_model). Targets: `stock`, `bf16`, `fp4`, `fp4:<backend>`,
each with any of `+compile` (compile=regional), `+eager` (compile=none), `+low` (memory_mode=low),
`+nographs` (cuda_graphs=false), `+single` / `+replicas` / `+balanced` / `+parallel` (placement),
`+sdpa` / `+cudnn` / `+fp8attn` (the attention kernel; `+fp8attn`: cudnn-fp8), `+autotune` (compile_autotune), `+vae` (compile_vae), `+t5` (compile_text_encoder), `+rows` (compile_persistent_rows), `+qkv` (fuse_qkv), `+rope` (fuse_rope), `+mod` (precompute_modulation), `+gn` (split_group_norm), `+norows` / `+noqkv` / `+nomod` / `+nogn` (those four off: both services' defaults), `+fused` / `+unfused` (fuse_kernels on / off); without them a
service runs with its defaults. The peers a user would build from stock diffusers: `stock+compile`
(torch.compile of the transformer, fullgraph) and `stock+fp8` (torchao fp8 row-wise, then compiled).
`--lora A[,B]` times a LoRA request (and, given two, both at once, and switching) against the base
request on each target; `--first-block-cache T [T ...]` times requests with First Block Cache at those thresholds
against the base request. Every target reports the compiles after
its warm-up over the whole mixed run (sizes, an unseen size, LoRAs, true CFG): they must be 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..service_process import running_service
from .images import decode_b64, encoding_costs, natural_image
from .measure import measure_images, measure_service
from .report import compare_images, headline, table, without_images
from .stock import run_stock, stock_child
from .targets import parse_target, service_env


def run(args) -> dict:
    import diffusers
    import torch

    R = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
         "diffusers": diffusers.__version__, "command": "python -m flux_api.bench " + " ".join(args.argv),
         "sizes": args.sizes, "steps": args.steps, "targets": {}}
    lora_dir = args.lora_dir
    model = args.model
    if model == "full":
        from ..random_model import full_model, lora_names

        model, full_loras = map(str, full_model())
        lora_dir = lora_dir or full_loras
        args.lora = args.lora or lora_names()
    if model == "tiny":
        from ..engine.tiny import ensure_tiny_model
        from ..settings import BF16Settings

        model = str(ensure_tiny_model(BF16Settings(model="tiny").cache_dir))
    for i, target in enumerate(args.targets):
        print(f"[{time.strftime('%H:%M:%S')}] {target}", flush=True)
        kind, backend, options = parse_target(target)
        try:
            if kind == "stock":
                R["targets"][target] = run_stock(model, args.sizes, args.steps, args.images, tuple(options))
            else:
                env = service_env(kind, options, args.sizes, lora_dir)
                with running_service(kind, model, args.port + i, backend=backend, env=env,
                                     log_path=f"/tmp/bench-{i}.log") as (client, ready_s):
                    wanted = args.concurrency_for is None or target in args.concurrency_for
                    res = measure_service(client, args.sizes, args.steps, args.concurrency if wanted else [],
                                          args.unseen, args.concurrency_px or min(args.sizes),
                                          args.lora, args.repeats, args.first_block_cache)
                    res["ready_s"] = ready_s
                    if args.images > 1:
                        res["images"] = measure_images(client, args.concurrency_px or max(args.sizes), args.steps, args.images,
                                                       repeats=args.repeats)
                    R["targets"][target] = res
        except Exception as e:  # noqa: BLE001 - record it and go on with the next target
            R["targets"][target] = {"error": f"{type(e).__name__}: {e}"[-3000:]}
        try:  # the report's own failure is recorded too, never the end of the run
            for line in compare_images(R, target, kind if backend is None else f"{kind}:{backend}"):
                print(line, flush=True)
            print(headline(target, R["targets"][target], R), flush=True)
        except Exception as e:  # noqa: BLE001
            R["targets"][target]["report_error"] = f"{type(e).__name__}: {e}"[-1000:]
        print(json.dumps(without_images(R["targets"][target]), default=str)[:1500], flush=True)
        # What is done survives a kill, the summary too (what a run's last copy brings back without the images)
        Path(args.out).write_text(json.dumps(R, indent=1, default=str))
        Path(args.out).with_suffix(".summary.json").write_text(json.dumps(without_images(R), indent=1, default=str))
    px = max(args.sizes)
    model_out = next((decode_b64(t["last_image_b64"][px]) for t in R["targets"].values() if "last_image_b64" in t), None)
    R["encoding_ms"] = encoding_costs({"natural": natural_image(px), **({"model_output": model_out} if model_out else {})})
    return R


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m flux_api.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | full | a diffusers folder")
    ap.add_argument("--targets", type=lambda s: s.split(","), default=["stock", "bf16", "fp4"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--concurrency-px", type=int, help="size of the images/min runs (default: the smallest size)")
    ap.add_argument("--concurrency-for", type=lambda s: s.split(","),
                    help="targets that get the images/min runs (default: all; GPU time is scarce)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per size (the best is reported, all are kept)")
    ap.add_argument("--lora", type=lambda s: s.split(","),
                    help="LoRA name(s), comma-separated: the first is checked against CUDA graphs, switching to a "
                    "second is timed (--model full makes two random ones)")
    ap.add_argument("--lora-dir", help="the services' LoRA folder (default: --model full's random LoRAs)")
    ap.add_argument("--unseen", type=int, default=768, help="a size no warm-up ran, for the first-request cost")
    ap.add_argument("--images", type=int, default=0, help="n > 1: images/min of one request of n images against n "
                    "requests of one, image-to-image and inpainting latency (at --concurrency-px or the largest size), "
                    "and stock diffusers batching n images against n calls")
    ap.add_argument("--first-block-cache", type=float, nargs="*", metavar="THRESHOLD",
                    help="time each service's requests with first_block_cache at these thresholds too (at the "
                    "largest size: steps skipped, PSNR against the service's own base image)")
    ap.add_argument("--port", type=int, default=8301)
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--stock-child", help=argparse.SUPPRESS)
    ap.add_argument("--stock-options", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    for t in args.targets:
        try:
            parse_target(t)
        except ValueError as e:
            ap.error(str(e))
    if args.stock_child:
        options = tuple(o for o in args.stock_options.split(",") if o)
        print("STOCK " + json.dumps(stock_child(args.stock_child, args.sizes, args.steps, args.images, options)), flush=True)
        return
    R = run(args)
    Path(args.out).write_text(json.dumps(R, indent=1, default=str))
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(without_images(R), indent=1, default=str))
    print("\n" + table(R))
