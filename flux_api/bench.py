"""The benchmark: each service and backend end to end through HTTP (a real uvicorn process per
target, an HTTP client), against stock diffusers in the same run. Prints a table and writes JSON.

    python -m flux_api.bench --model tiny --sizes 256 --steps 4                      # CPU, seconds
    python -m flux_api.bench --model full --targets stock,bf16,bf16+compile --out bench.json   # a GPU

`--model full` builds the full-size random-weight FLUX.1-dev first (into /dev/shm when it fits;
flux_api.random_model).
Targets: `stock`, `bf16`, `fp4`, `fp4:<backend>`, each with any of `+compile` (compile=regional),
`+eager` (compile=none), `+low` (memory_mode=low), `+nographs` (cuda_graphs=false); without them a
service runs with its defaults.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .service_process import ROOT, running_service
PROMPT = "a lighthouse on a cliff at dusk, dramatic clouds"


def natural_image(px: int):
    """A natural-looking test image (smooth gradients, soft shapes, mild grain): PNG's typical case,
    where random-weight model output (noise) is its worst."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:px, 0:px] / px
    rgb = np.stack([0.5 + 0.4 * np.sin(3 * x + 1), 0.4 + 0.3 * y, 0.6 - 0.3 * x * y], -1)
    img = Image.fromarray((rgb * 255).astype("uint8"))
    d = ImageDraw.Draw(img)
    for i in range(12):
        c = int(px * (0.1 + 0.07 * i))
        d.ellipse([c - px // 10, c // 2, c + px // 8, c // 2 + px // 6], fill=(40 + 15 * i, 90, 200 - 12 * i))
    img = img.filter(ImageFilter.GaussianBlur(px / 200))
    grain = np.random.default_rng(0).normal(0, 3, (px, px, 3))
    return Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype("uint8"))


def encoding_costs(images: dict) -> dict:
    """ms per format/level on each image (median of 3)."""
    from .imaging import encode_image

    out = {}
    for label, img in images.items():
        for fmt, level in (("png", 1), ("png", 6), ("jpeg", None), ("webp", None)):
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                data = encode_image(img, fmt, {"p": 1}, png_compress_level=level or 1)
                ts.append((time.perf_counter() - t) * 1e3)
            key = f"{fmt}{level or ''}"
            out.setdefault(label, {})[key] = {"ms": round(sorted(ts)[1], 1), "kib": round(len(data) / 1024)}
    return out


def measure_service(client, sizes: list[int], steps: int, concurrency: list[int], unseen: int,
                    concurrency_px: int, lora: str | None = None, repeats: int = 3) -> dict:
    def once(px, seed=1, **kw):
        t = time.perf_counter()
        r = client.post("/generate", json={"prompt": PROMPT, "width": px, "height": px, "num_inference_steps": steps,
                                           "seed": seed, **kw})
        wall = time.perf_counter() - t
        r.raise_for_status()
        body = r.json()
        tm = body["timings"]
        return {"latency_s": round(wall, 3), "inference_ms": tm["inference_ms"], "encode_ms": tm["encode_ms"],
                "overhead_ms": round(wall * 1e3 - tm["inference_ms"] - tm["encode_ms"], 1), "body": body}

    res: dict = {"sizes": {}}
    for px in sizes:
        runs = [once(px) for _ in range(repeats)]
        best = min(runs, key=lambda r: r["latency_s"])
        res["sizes"][px] = {k: v for k, v in best.items() if k != "body"}
        res["sizes"][px]["all_latency_s"] = [r["latency_s"] for r in runs]
        res["sizes"][px]["s_per_step"] = round(best["inference_ms"] / 1e3 / steps, 4)
        res["sizes"][px]["overhead_pct"] = round(100 * best["overhead_ms"] / best["inference_ms"], 2)
        res.setdefault("last_image_b64", {})[px] = best["body"]["image"]
    first = once(unseen, seed=2)
    res["unseen_size"] = {"px": unseen, "first_latency_s": first["latency_s"], "second_latency_s": once(unseen, seed=3)["latency_s"]}
    for c in concurrency:  # the service's default format: throughput pays for its encoding, if it shows
        n = max(2 * c, 2)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            list(pool.map(lambda i: once(concurrency_px, seed=10 + i), range(n)))
        res.setdefault("images_per_min", {})[c] = round(n * 60 / (time.perf_counter() - t0), 2)
    res["images_per_min_px"] = concurrency_px
    if lora:  # CUDA graphs replay the base model only: a LoRA must change the image, and leave no trace
        px = min(sizes)
        before, with_lora = once(px, seed=5), client.post("/generate", json={
            "prompt": PROMPT, "width": px, "height": px, "num_inference_steps": steps, "seed": 5, "lora_name": lora})
        after = once(px, seed=5)
        check = {"status": with_lora.status_code, "base_latency_s": before["latency_s"]}
        if with_lora.status_code == 200:
            check.update(lora_changes_image=with_lora.json()["image"] != before["body"]["image"],
                         base_after_lora_identical=after["body"]["image"] == before["body"]["image"],
                         lora_inference_ms=with_lora.json()["timings"]["inference_ms"])
        else:
            check["error"] = with_lora.json().get("error", {}).get("message")
        res["lora_check"] = check
    st = client.get("/model-status").json()
    res["backend"], res["precision"], res["compile"] = st["backend"], st["precision"]["transformer"], st.get("compile")
    res["cuda_graphs"], res["memory"] = st.get("cuda_graphs"), st.get("memory")
    dev = st["devices"][0]
    res["peak_mib"] = dev.get("peak_allocated_mib", dev.get("process_peak_rss_mib"))
    res["peak_reserved_mib"] = dev.get("peak_reserved_mib")
    return res


def stock_child(model: str, sizes: list[int], steps: int) -> dict:
    """Stock diffusers FluxPipeline, eager, as its docs show it (no HTTP)."""
    import torch
    from diffusers import FluxPipeline

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    t = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(model, dtype=dtype)
    pipe = pipe.to("cuda") if cuda else pipe
    pipe.set_progress_bar_config(disable=True)
    out = {"load_s": round(time.perf_counter() - t, 2), "sizes": {}}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for px in sizes:
        pipe(PROMPT, width=px, height=px, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
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
    if cuda:
        out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def image_psnr(a, b) -> float | None:
    """PSNR in dB between two RGB images (PIL or arrays); inf when identical, None when sizes differ."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return None
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def psnr(a_b64: str, b_b64: str) -> float | None:
    from PIL import Image

    a, b = (Image.open(io.BytesIO(base64.b64decode(x))).convert("RGB") for x in (a_b64, b_b64))
    return image_psnr(a, b)


_OPTIONS = {"compile": ("COMPILE", "regional"), "eager": ("COMPILE", "none"), "low": ("MEMORY_MODE", "low"),
            "nographs": ("CUDA_GRAPHS", "false")}


def parse_target(t: str) -> tuple[str, str | None, dict]:
    """`fp4:bnb-fp4+compile+low` -> ("fp4", "bnb-fp4", {"COMPILE": "regional", "MEMORY_MODE": "low"})."""
    base, *opts = t.split("+")
    kind, _, backend = base.partition(":")
    unknown = [o for o in opts if o not in _OPTIONS]
    if unknown:
        raise ValueError(f"unknown target option(s) {unknown} in {t!r}; known: {sorted(_OPTIONS)}")
    return kind, backend or None, dict(_OPTIONS[o] for o in opts)


def run(args) -> dict:
    import diffusers
    import torch

    R = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
         "diffusers": diffusers.__version__, "command": "python -m flux_api.bench " + " ".join(args.argv),
         "sizes": args.sizes, "steps": args.steps, "targets": {}}
    lora_dir = None
    model = args.model
    if model == "full":
        from .random_model import full_model, lora_names

        model, lora_dir = map(str, full_model())
        args.lora = args.lora or lora_names()[0]
    if model == "tiny":
        from .engine.tiny import ensure_tiny_model
        from .settings import BF16Settings

        model = str(ensure_tiny_model(BF16Settings(model="tiny").cache_dir))
    for i, target in enumerate(args.targets):
        print(f"[{time.strftime('%H:%M:%S')}] {target}", flush=True)
        kind, backend, options = parse_target(target)
        try:
            if kind == "stock":
                p = subprocess.run([sys.executable, "-m", "flux_api.bench", "--stock-child", model, "--sizes",
                                    *map(str, args.sizes), "--steps", str(args.steps)], cwd=ROOT, capture_output=True, text=True)
                line = [x for x in p.stdout.splitlines() if x.startswith("STOCK ")]
                R["targets"][target] = json.loads(line[0][6:]) if line else {"error": p.stderr[-3000:]}
                if line:  # JSON made the sizes strings
                    R["targets"][target]["sizes"] = {int(k): v for k, v in R["targets"][target]["sizes"].items()}
                continue
            prefix = f"FLUX_{kind.upper()}_"
            env = {prefix + "WARMUP_SIZES": json.dumps(sorted(set(args.sizes), reverse=True)),
                   **({prefix + "LORA_DIR": lora_dir} if lora_dir else {}),
                   **{prefix + k: v for k, v in options.items()}}
            with running_service(kind, model, args.port + i, backend=backend, env=env,
                                 log_path=f"/tmp/bench-{i}.log") as (client, ready_s):
                wanted = args.concurrency_for is None or target in args.concurrency_for
                res = measure_service(client, args.sizes, args.steps, args.concurrency if wanted else [],
                                      args.unseen, args.concurrency_px or min(args.sizes),
                                      args.lora if "COMPILE" not in options else None, args.repeats)
                res["ready_s"] = ready_s
                R["targets"][target] = res
        except Exception as e:  # noqa: BLE001 - record it and go on with the next target
            R["targets"][target] = {"error": f"{type(e).__name__}: {e}"[-3000:]}
        print(json.dumps({k: v for k, v in R["targets"][target].items() if k != "last_image_b64"}, default=str)[:1500], flush=True)
        Path(args.out).write_text(json.dumps(R, indent=1, default=str))  # what is done survives a kill
    from PIL import Image

    model_out = None
    for t in R["targets"].values():
        if "last_image_b64" in t:
            model_out = Image.open(io.BytesIO(base64.b64decode(t["last_image_b64"][max(args.sizes)])))
            break
    px = max(args.sizes)
    R["encoding_ms"] = encoding_costs({"natural": natural_image(px), **({"model_output": model_out} if model_out else {})})
    return R


def _without_images(obj):
    if isinstance(obj, dict):
        return {k: _without_images(v) for k, v in obj.items() if k not in ("last_image_b64", "png_b64")}
    return obj


def table(R: dict) -> str:
    stock = R["targets"].get("stock", {})
    rows = ["| target | backend | size | latency s | vs stock | s/step | overhead % | encode ms | ready s | unseen size 1st/2nd s | images/min by concurrency | peak MiB alloc / reserved | PSNR vs stock |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in R["targets"].items():
        if "error" in t:
            rows.append(f"| {name} | ERROR: {t['error'][:160]} |")
            continue
        for px, s in t["sizes"].items():
            base = stock.get("sizes", {}).get(px, {}).get("latency_s")
            ratio = round(s["latency_s"] / base, 3) if base else "-"
            if name == "stock":
                rows.append(f"| stock | diffusers eager | {px} | {s['latency_s']} | 1.0 | - | - | - | {t.get('load_s')} | - | - | {t.get('peak_mib', '-')} | - |")
                continue
            ps = psnr(t["last_image_b64"][px], stock["sizes"][px]["png_b64"]) if base else "-"
            u = t["unseen_size"]
            rows.append(f"| {name} | {t['backend']} | {px} | {s['latency_s']} | {ratio} | {s['s_per_step']} | {s['overhead_pct']} | "
                        f"{s['encode_ms']} | {t['ready_s']} | {u['first_latency_s']}/{u['second_latency_s']} ({u['px']}px) | "
                        f"{t.get('images_per_min')} @{t.get('images_per_min_px')}px | {t['peak_mib']} / "
                        f"{t.get('peak_reserved_mib')} | {ps} |")
    for name, t in R["targets"].items():
        if t.get("lora_check") or t.get("memory"):
            rows.append(f"\n{name}: compile {t.get('compile')}; CUDA graphs {t.get('cuda_graphs')}; memory {t.get('memory')}; "
                        f"LoRA check {t.get('lora_check')}")
    enc = "; ".join(f"{label}: " + ", ".join(f"{k} {v['ms']} ms/{v['kib']} KiB" for k, v in d.items())
                    for label, d in R.get("encoding_ms", {}).items())
    return "\n".join(rows) + f"\n\nImage encoding at {max(R['sizes'])}px (host CPU): {enc}\n" + \
        f"GPU: {R['gpu']}; torch {R['torch']}; diffusers {R['diffusers']}; command: {R['command']}"


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
    ap.add_argument("--lora", help="a LoRA name to check against CUDA graphs (--model full makes random ones)")
    ap.add_argument("--unseen", type=int, default=768, help="a size no warm-up ran, for the first-request cost")
    ap.add_argument("--port", type=int, default=8301)
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--stock-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.stock_child:
        print("STOCK " + json.dumps(stock_child(args.stock_child, args.sizes, args.steps)), flush=True)
        return
    R = run(args)
    Path(args.out).write_text(json.dumps(R, indent=1, default=str))
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(_without_images(R), indent=1, default=str))
    print("\n" + table(R))


if __name__ == "__main__":
    main()
