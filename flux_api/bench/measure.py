"""One service measured through HTTP: latency per size, the first request at a size no warm-up ran,
images per minute by concurrency, the LoRA check, and what /model-status reports."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

PROMPT = "a lighthouse on a cliff at dusk, dramatic clouds"


def measure_service(client, sizes: list[int], steps: int, concurrency: list[int], unseen: int,
                    concurrency_px: int, loras: list[str] | None = None, repeats: int = 3) -> dict:
    def post(px, seed=1, **kw):
        return client.post("/generate", json={"prompt": PROMPT, "width": px, "height": px,
                                              "num_inference_steps": steps, "seed": seed, **kw})

    def once(px, seed=1, **kw):
        t = time.perf_counter()
        r = post(px, seed, **kw)
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
    if loras:  # CUDA graphs replay the base model only: a LoRA must change the image, and leave no trace
        px = min(sizes)
        before, with_lora = once(px, seed=5), post(px, seed=5, lora_name=loras[0])
        after = once(px, seed=5)
        check = {"status": with_lora.status_code, "base_latency_s": before["latency_s"]}
        if with_lora.status_code == 200:
            check.update(lora_changes_image=with_lora.json()["image"] != before["body"]["image"],
                         base_after_lora_identical=after["body"]["image"] == before["body"]["image"],
                         lora_inference_ms=with_lora.json()["timings"]["inference_ms"])
            if len(loras) > 1:  # the second one loads, then each request switches (1 step each)
                names = [loras[1], loras[0]] * 3
                check["lora_ms_load_then_switches"] = [
                    once(px, seed=0, num_inference_steps=1, lora_name=n)["body"]["timings"]["lora_ms"] for n in names]
        else:
            check["error"] = with_lora.json().get("error", {}).get("message")
        res["lora_check"] = check
    st = client.get("/model-status").json()
    res["backend"], res["precision"], res["compile"] = st["backend"], st["precision"]["transformer"], st.get("compile")
    res["cuda_graphs"], res["memory"] = st.get("cuda_graphs"), st.get("memory")
    res["placement"] = {k: st.get("placement", {}).get(k) for k in ("mode", "devices")}
    dev = st["devices"][0]
    res["peak_mib"] = dev.get("peak_allocated_mib", dev.get("process_peak_rss_mib"))
    res["peak_reserved_mib"] = dev.get("peak_reserved_mib")
    return res
