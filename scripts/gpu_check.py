#!/usr/bin/env python3
"""One GPU run: both services, and each FP4 backend, load and generate at 1024x1024 on a full-size
random-weight FLUX.1-dev, end to end through HTTP, against stock diffusers in the same run.

    python scripts/gpu_check.py --out results.json [--model DIR] [--targets stock,bnb-fp4,torchao-fp8,bf16]

Without --model it builds the full-size random model first (33.7 GB, into /dev/shm when it fits).
Each service runs as its own `python -m flux_api` process; the client times the whole request.
Prints a table at the end.
"""

import argparse
import base64
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flux_api.service_process import ROOT, running_service  # noqa: E402
from flux_api.bench import image_psnr as psnr  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, dramatic clouds"
REQ = {"prompt": PROMPT, "width": 1024, "height": 1024, "num_inference_steps": 28, "guidance_scale": 3.5, "seed": 7}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stock(model: str, out_png: Path) -> dict:
    """Stock diffusers FluxPipeline, eager bf16, the way its docs show it (run in a child process)."""
    import torch
    from diffusers import FluxPipeline

    t = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(model, dtype=torch.bfloat16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t
    args = {k: v for k, v in REQ.items() if k != "seed"}
    pipe(**{**args, "num_inference_steps": 2}, generator=torch.Generator("cpu").manual_seed(0))
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        t = time.perf_counter()
        img = pipe(**args, generator=torch.Generator("cpu").manual_seed(REQ["seed"])).images[0]
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    img.save(out_png)
    return {"load_s": round(load_s, 1), "latency_s": [round(x, 3) for x in times],
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def service(kind: str, backend: str | None, model: str, port: int, timeout_s: float = 300) -> dict:
    from PIL import Image

    res: dict = {}
    try:
        with running_service(kind, model, port, backend=backend, log_path=f"/tmp/svc-{backend or kind}.log",
                             timeout_s=timeout_s) as (c, ready_s):
            res["ready_s"] = ready_s
            times, server = [], []
            for _ in range(2):
                t = time.perf_counter()
                r = c.post("/generate", json=REQ)
                times.append(round(time.perf_counter() - t, 3))
                r.raise_for_status()
                body = r.json()
                server.append(body["timings"])
            res["latency_s"] = times
            res["server_timings_last"] = server[-1]
            res["backend"] = body["backend"]
            img = Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB")
            img.save(f"/tmp/img-{backend or kind}.png")
            st = c.get("/model-status").json()
            res["precision"] = st["precision"]["transformer"]
            res["placement"] = st["placement"]
            res["peak_gib"] = round(st["devices"][0]["peak_allocated_mib"] / 1024, 2)
            res["allocated_gib"] = round(st["devices"][0]["allocated_mib"] / 1024, 2)
            res["image_size"] = list(img.size)
    except Exception as e:  # noqa: BLE001 - record and move on to the next target
        res["error"] = f"{type(e).__name__}: {e}"[-3000:]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--targets", default="stock,bnb-fp4,torchao-fp8,bf16")
    ap.add_argument("--stock-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stock_child:
        print("STOCK " + json.dumps(stock(args.stock_child, Path("/tmp/img-stock.png"))), flush=True)
        return

    import diffusers
    import torch

    R = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "diffusers": diffusers.__version__,
         "request": REQ, "command": " ".join(sys.argv)}
    for pkg in ("torchao", "bitsandbytes", "transformers", "fastapi", "uvicorn"):
        try:
            R[pkg] = __import__(pkg).__version__
        except Exception as e:  # noqa: BLE001
            R[pkg] = f"missing ({type(e).__name__})"

    def save():
        Path(args.out).write_text(json.dumps(R, indent=1))

    model = args.model
    if not model:
        shm_free = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").exists() else 0
        model = "/dev/shm/flux-full" if shm_free > 40 * 2**30 else "/tmp/flux-full"
        t = time.perf_counter()
        log(f"building the full-size random model into {model}")
        subprocess.run([sys.executable, "scripts/build_random_model.py", "--size", "full", "--device", "cuda",
                        "--out", model], cwd=ROOT, check=True)
        R["build_and_save_s"] = round(time.perf_counter() - t, 1)
        save()
    for i, target in enumerate(args.targets.split(",")):
        log(f"target {target}")
        if target == "stock":
            p = subprocess.run([sys.executable, __file__, "--stock-child", model], cwd=ROOT, capture_output=True, text=True)
            line = [x for x in p.stdout.splitlines() if x.startswith("STOCK ")]
            R["stock"] = json.loads(line[0][6:]) if line else {"error": p.stderr[-3000:]}
        elif target == "bf16":
            R["bf16"] = service("bf16", None, model, 8101 + i)
        else:
            R[target] = service("fp4", target, model, 8101 + i)
        log(json.dumps(R[target])[:800])
        save()

    from PIL import Image

    ref = Path("/tmp/img-stock.png")
    stock_lat = min(R.get("stock", {}).get("latency_s", [float("nan")]))
    print("\n| target | backend | precision | ready s | latency s (2 runs) | vs stock | peak GiB | PSNR vs stock dB |")
    print("|---|---|---|---|---|---|---|---|")
    for target in args.targets.split(","):
        r = R.get(target, {})
        if "error" in r:
            print(f"| {target} | ERROR: {r['error'][:120]} |")
            continue
        lat = r.get("latency_s", [])
        ratio = round(min(lat) / stock_lat, 3) if lat and stock_lat == stock_lat else "-"
        img = Path(f"/tmp/img-{target}.png")
        p = psnr(Image.open(img).convert("RGB"), Image.open(ref).convert("RGB")) if img.exists() and ref.exists() else "-"
        r["psnr_vs_stock_db"] = p
        print(f"| {target} | {r.get('backend', 'diffusers eager')} | {r.get('precision', 'bfloat16')} | "
              f"{r.get('ready_s', r.get('load_s'))} | {lat} | {ratio} | {r.get('peak_gib')} | {p} |")
    save()
    print(f"\nGPU: {R['gpu']}; torch {R['torch']}, diffusers {R['diffusers']}, torchao {R['torchao']}, "
          f"bitsandbytes {R['bitsandbytes']}, transformers {R['transformers']}")


if __name__ == "__main__":
    main()
