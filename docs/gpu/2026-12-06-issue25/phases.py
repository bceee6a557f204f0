#!/usr/bin/env python3
"""Where one request's time goes, in process, on a service's own loaded replica (issue 25, item 2):
the text encoders (encoded and from the prompt cache), the 28 denoising steps, the VAE decode, the
conversion to PIL, PNG encoding (flux_api/png.py against Pillow), and a torch profiler trace of one
whole generation with the GPU's idle time between kernels.

    python docs/gpu/2026-12-06-issue25/phases.py --service fp4 --model /dev/shm/<full model> --out DIR

A RECORD of the run of 2026-12-06 (README.md beside it), not maintained code. Runs on the CPU too
(--model tiny --px 256 --steps 4), which is how it was checked before the GPU run.
"""

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

import torch  # noqa: E402

from flux_api.engine.services import MANAGERS  # noqa: E402
from flux_api.engine.types import GenerationParams  # noqa: E402
from flux_api.png import write_png  # noqa: E402
from flux_api.settings import BF16Settings, FP4Settings  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, dramatic clouds"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--service", default="fp4")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--px", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    out = Path(a.out)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def ms(fn, n=3):
        ts = []
        for _ in range(n):
            sync()
            t = time.perf_counter()
            r = fn()
            sync()
            ts.append((time.perf_counter() - t) * 1e3)
        return round(min(ts), 2), r

    settings = (FP4Settings if a.service == "fp4" else BF16Settings)(model=a.model, warmup_sizes=[a.px])
    m = MANAGERS[a.service](settings)
    t = time.perf_counter()
    m.load()
    R = {"gpu": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "service": a.service,
         "backend": m.backend_name, "px": a.px, "steps": a.steps, "load_s": round(time.perf_counter() - t, 1)}
    r = m.replicas[0]
    r.on_thread_start()
    pipe, dev = r.pipe, r.pipe._execution_device
    params = GenerationParams(prompt=PROMPT, seed=1, width=a.px, height=a.px, num_inference_steps=a.steps,
                              guidance_scale=3.5)
    R["request_ms"], image = ms(lambda: r.run(params))  # the prompt is cached from the first call on
    r.prompts.clear()
    R["request_uncached_prompt_ms"], _ = ms(lambda: (r.prompts.clear(), r.run(params))[1], n=2)
    R["encode_prompt_ms"], _ = ms(lambda: pipe.encode_prompt(PROMPT, None, device=dev, max_sequence_length=512))
    R["prompt_cache_hit_ms"], _ = ms(lambda: r.prompts.embeddings(pipe, PROMPT, 512, dev, dev))
    embeds, pooled = r.prompts.embeddings(pipe, PROMPT, 512, dev, dev)
    gen = lambda: torch.Generator("cpu").manual_seed(1)  # noqa: E731
    R["denoise_ms"], latents = ms(lambda: pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, width=a.px,
                                               height=a.px, num_inference_steps=a.steps, guidance_scale=3.5,
                                               generator=gen(), output_type="latent").images)
    unpacked = pipe._unpack_latents(latents, a.px, a.px, pipe.vae_scale_factor)
    unpacked = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    with torch.no_grad():
        R["vae_decode_ms"], decoded = ms(lambda: pipe.vae.decode(unpacked, return_dict=False)[0])
    R["to_pil_ms"], pil = ms(lambda: pipe.image_processor.postprocess(decoded, output_type="pil")[0])
    R["png_ours_ms"], data = ms(lambda: write_png(pil, {"parameters": "{}"}, 1), n=5)
    R["png_pillow_ms"], _ = ms(lambda: pil.save(io.BytesIO(), "PNG", compress_level=1), n=5)
    R["png_kib"] = len(data) // 1024
    R["transformer_step_ms_est"] = round(R["denoise_ms"] / a.steps, 2)

    # One whole generation under the profiler: the GPU's idle time between kernels, where it is.
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        sync()
        t = time.perf_counter()
        r.run(params)
        sync()
        R["profiled_request_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    trace = out / f"{a.service}-trace.json"
    prof.export_chrome_trace(str(trace))
    if cuda:
        kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                         if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
        busy, gaps, end = 0.0, [], kernels[0][0]
        for s, e in kernels:
            if s > end:
                gaps.append(s - end)
            busy += max(0, e - max(s, end))
            end = max(end, e)
        span = (kernels[-1][1] - kernels[0][0]) / 1e3
        R["profile"] = {"kernels": len(kernels), "gpu_span_ms": round(span, 1), "gpu_busy_ms": round(busy / 1e3, 1),
                        "gpu_idle_ms": round(sum(gaps) / 1e3, 1), "gaps_over_1ms": sum(g > 1e3 for g in gaps),
                        "largest_gaps_ms": [round(g / 1e3, 2) for g in sorted(gaps)[-8:]]}
    # Two VAE levers, measured here only (not in the services): channels_last, then torch.compile.
    try:
        with torch.no_grad():
            pipe.vae.to(memory_format=torch.channels_last)
            R["vae_decode_channels_last_ms"], _ = ms(lambda: pipe.vae.decode(unpacked, return_dict=False)[0])
            decode = torch.compile(pipe.vae.decode)
            t = time.perf_counter()
            decode(unpacked, return_dict=False)
            sync()
            R["vae_compile_s"] = round(time.perf_counter() - t, 1)
            R["vae_decode_compiled_ms"], compiled = ms(lambda: decode(unpacked, return_dict=False)[0])
            R["vae_compiled_max_abs_diff"] = float((compiled.float() - decoded.float()).abs().max())
    except Exception as e:  # noqa: BLE001 - a record of what happened
        R["vae_lever_error"] = f"{type(e).__name__}: {e}"[:500]
    R["top_ops"] = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=25)
    (out / f"{a.service}-phases.json").write_text(json.dumps(R, indent=1))
    print(json.dumps({k: v for k, v in R.items() if k != "top_ops"}, indent=1))
    print(R["top_ops"])


if __name__ == "__main__":
    main()
