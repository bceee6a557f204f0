#!/usr/bin/env python3
"""The serving engine on GPUs: one replica vs two replicas (images per minute), balanced mode, and
LoRA switching, on a full-size random-weight FLUX.1-dev, through HTTP. Needs 2 GPUs.

    python scripts/gpu_serving.py --out serving.json [--model DIR --lora-dir DIR] [--n 6]

Prints a table at the end.
"""

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flux_api.service_process import ROOT, running_service  # noqa: E402

REQ = {"prompt": "a lighthouse on a cliff at dusk", "width": 1024, "height": 1024, "num_inference_steps": 28,
       "guidance_scale": 3.5, "output_format": "jpeg"}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def throughput(client, n: int, concurrency: int) -> dict:
    def one(i):
        t = time.perf_counter()
        r = client.post("/generate", json={**REQ, "seed": i})
        r.raise_for_status()
        return time.perf_counter() - t, r.json()["timings"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        res = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return {"n": n, "concurrency": concurrency, "wall_s": round(wall, 2), "images_per_min": round(n * 60 / wall, 2),
            "latency_s": [round(x, 2) for x, _ in res], "inference_ms": [t["inference_ms"] for _, t in res]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--lora-dir")
    ap.add_argument("--out", default="serving.json")
    ap.add_argument("--n", type=int, default=6)
    args = ap.parse_args()
    import torch

    R = {"gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], "torch": torch.__version__,
         "command": " ".join(sys.argv), "request": REQ}
    save = lambda: Path(args.out).write_text(json.dumps(R, indent=1))  # noqa: E731
    model, loras = args.model, args.lora_dir
    if not model:
        model, loras = "/dev/shm/flux-full", "/dev/shm/flux-loras"
        t = time.perf_counter()
        subprocess.run([sys.executable, "scripts/build_random_model.py", "--size", "full", "--device", "cuda",
                        "--out", model, "--lora-out", loras], cwd=ROOT, check=True)
        R["build_s"] = round(time.perf_counter() - t, 1)
    env = {"FLUX_BF16_LORA_DIR": loras}
    runs = [("one replica (GPU 0)", "bf16", None, {"CUDA_VISIBLE_DEVICES": "0"}),
            ("two replicas (auto)", "bf16", None, {"CUDA_VISIBLE_DEVICES": "0,1"}),
            ("balanced", "bf16", None, {"CUDA_VISIBLE_DEVICES": "0,1", "FLUX_BF16_PLACEMENT": "balanced"}),
            ("fp4 bnb-fp4, two replicas", "fp4", "bnb-fp4", {"CUDA_VISIBLE_DEVICES": "0,1", "FLUX_FP4_PLACEMENT": "replicas"})]
    for i, (name, kind, backend, extra) in enumerate(runs):
        log(name)
        res = R[name] = {}
        try:
            with running_service(kind, model, 8201 + i, backend=backend, env={**env, **extra},
                                 log_path=f"/tmp/svc-serving-{i}.log") as (c, ready_s):
                st = c.get("/model-status").json()
                res.update(ready_s=ready_s, placement={k: st["placement"][k] for k in ("mode", "devices", "reason")},
                           components=[r["components"] for r in st["placement"]["replica_status"]],
                           memory=[{k: d.get(k) for k in ("device", "allocated_mib", "peak_allocated_mib")} for d in st["devices"]])
                res["single"] = throughput(c, 1, 1)
                if name != "balanced":
                    res["throughput"] = throughput(c, args.n if kind == "bf16" else 2, args.n)
                if i == 0:  # LoRA switching between two cached full-size adapters
                    names = sorted(p.stem for p in Path(loras).glob("*.safetensors"))[:2]
                    ms = []
                    for k in range(6):
                        r = c.post("/generate", json={**REQ, "num_inference_steps": 1, "seed": 0, "lora_name": names[k % 2]})
                        r.raise_for_status()
                        ms.append(r.json()["timings"]["lora_ms"])
                    res["lora_ms_first_loads_then_switches"] = ms
        except Exception as e:  # noqa: BLE001
            res["error"] = f"{type(e).__name__}: {e}"[-3000:]
        log(json.dumps(res)[:1500])
        save()

    one = R["one replica (GPU 0)"]
    print("\n| run | placement | ready s | 1 image s | images/min (n concurrent) | vs one replica |")
    print("|---|---|---|---|---|---|")
    base = one.get("throughput", {}).get("images_per_min")
    for name, *_ in runs:
        r = R[name]
        if "error" in r:
            print(f"| {name} | ERROR {r['error'][:200]} |")
            continue
        tp = r.get("throughput", {}).get("images_per_min", "-")
        ratio = round(tp / base, 2) if base and tp != "-" and name.startswith("two") else "-"
        print(f"| {name} | {r['placement']['mode']} {r['placement']['devices']} | {r['ready_s']} | "
              f"{r['single']['latency_s'][0]} | {tp} | {ratio} |")
    if "lora_ms_first_loads_then_switches" in one:
        print(f"\nLoRA lora_ms (load a, load b, then switches): {one['lora_ms_first_loads_then_switches']}")
    print(f"GPUs: {R['gpus']}; torch {R['torch']}")
    save()


if __name__ == "__main__":
    main()
