#!/usr/bin/env python3
"""Measure the speed levers in one process, before building them into the services (issue 5).

A RECORD of the H100 run of 2026-11-27, not maintained code: see README.md next to it.

    python scripts/gpu_explore.py --part bf16  --out DIR    # attention, fused QKV, compile, CUDA graphs,
                                                            # VAE, FBCache, batching, CPU text encoders
    python scripts/gpu_explore.py --part quant --out DIR    # fp8 / bnb-fp4 / int4 (+ compile, graphs), 4-bit T5

Full-size FLUX.1-dev with random weights, on one GPU. Each stage prints one line as it ends and the
JSON is rewritten after every stage, so a run cut short keeps what it measured. These are
transformer- and pipeline-level figures; the services' end-to-end numbers come from flux_api.bench.
"""

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

import torch  # noqa: E402

from flux_api.bench import image_psnr as psnr  # noqa: E402

T0 = time.perf_counter()
R: dict = {}
OUT = Path(".")


def log(msg):
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def save():
    (OUT / f"explore-{R['part']}.json").write_text(json.dumps(R, indent=1, default=str))


class Deadline(Exception):
    pass


def stage(name, fn, limit_s=150, budget_s=560):
    """Run one stage under a time limit; record its result or its error."""
    if time.perf_counter() - T0 > budget_s:
        R[name] = {"skipped": "out of time"}
        log(f"{name}: skipped (out of time)")
        return None

    def on_alarm(*_):
        raise Deadline(f"over {limit_s} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(limit_s))
    t = time.perf_counter()
    try:
        res = fn()
    except Exception as e:  # noqa: BLE001 - a failed stage is a result too
        res = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    finally:
        signal.alarm(0)
    res = res if isinstance(res, dict) else {"value": res}
    res["stage_s"] = round(time.perf_counter() - t, 1)
    R[name] = res
    log(f"{name}: {json.dumps(res, default=str)[:300]}")
    save()
    return res


def sync():
    torch.cuda.synchronize()


def time_ms(fn, n=8, warm=2):
    for _ in range(warm):
        fn()
    sync()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        sync()
        times.append(a.elapsed_time(b))
    times.sort()
    return round(times[len(times) // 2], 2)


def step_inputs(px, batch=1, guidance=True):
    g = torch.Generator("cuda").manual_seed(0)
    n = (px // 16) ** 2
    kw = dict(
        hidden_states=torch.randn(batch, n, 64, device="cuda", dtype=torch.bfloat16, generator=g),
        encoder_hidden_states=torch.randn(batch, 512, 4096, device="cuda", dtype=torch.bfloat16, generator=g),
        pooled_projections=torch.randn(batch, 768, device="cuda", dtype=torch.bfloat16, generator=g),
        timestep=torch.full((batch,), 0.5, device="cuda", dtype=torch.bfloat16),
        img_ids=torch.zeros(n, 3, device="cuda", dtype=torch.bfloat16),
        txt_ids=torch.zeros(512, 3, device="cuda", dtype=torch.bfloat16),
        guidance=torch.full((batch,), 3.5, device="cuda", dtype=torch.float32) if guidance else None,
    )
    return kw


def step_ms(tr, px, n=8, batch=1):
    kw = step_inputs(px, batch)
    with torch.inference_mode():
        return time_ms(lambda: tr(**kw, return_dict=False), n=n)


def first_call_s(tr, px):
    kw = step_inputs(px)
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        tr(**kw, return_dict=False)
    sync()
    return round(time.perf_counter() - t, 2)


PROMPT = "a lighthouse on a cliff at dusk, dramatic clouds"


def pipe_run(pipe, px, n=2, steps=28, seed=7, **kw):
    args = dict(prompt=PROMPT, width=px, height=px, num_inference_steps=steps, guidance_scale=3.5,
                max_sequence_length=512, **kw)
    pipe(**{**args, "num_inference_steps": 2}, generator=torch.Generator("cpu").manual_seed(0))
    times, img = [], None
    for _ in range(n):
        sync()
        t = time.perf_counter()
        img = pipe(**args, generator=torch.Generator("cpu").manual_seed(seed)).images
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return round(times[len(times) // 2], 3), img


def pipeline_figures(pipe, refs, n, s_key, psnr_key):
    """Latency, peak memory and PSNR against the reference image, at 1024 and 512."""
    out = {}
    for px in (1024, 512):
        torch.cuda.reset_peak_memory_stats()
        s, img = pipe_run(pipe, px, n=n)
        out[s_key.format(px=px)] = s
        out[f"peak_gib_{px}"] = gib(torch.cuda.max_memory_allocated())
        out[psnr_key.format(px=px)] = psnr(img[0], refs[px])
    return out


def gib(x):
    return round(x / 2**30, 2)


def linears_to_4bit(root, quant_type):
    """Swap every nn.Linear under `root` for a bitsandbytes 4-bit one, quantized as it moves to the GPU."""
    import bitsandbytes as bnb

    for name, lin in [(n, c) for n, c in root.named_modules() if isinstance(c, torch.nn.Linear)]:
        new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                compute_dtype=torch.bfloat16, quant_type=quant_type, device="meta")
        new.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type=quant_type)
        if lin.bias is not None:
            new.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
        parent, _, attr = name.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, attr, new.to("cuda"))


# ---------------------------------------------------------------------------------------------- bf16


def part_bf16():
    from diffusers import FirstBlockCacheConfig

    from flux_api.engine.graphs import GraphedForward
    from flux_api.engine.tiny import build_random_pipeline

    pipe = build_random_pipeline("full", device="cuda", dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    tr = pipe.transformer
    log(f"built in {time.perf_counter() - T0:.0f} s; allocated {gib(torch.cuda.memory_allocated())} GiB")
    refs = {}

    def eager_pipe():
        out = {}
        for px in (1024, 512):
            torch.cuda.reset_peak_memory_stats()
            s, img = pipe_run(pipe, px)
            refs[px] = img[0]
            out[f"s_{px}"] = s
            out[f"peak_gib_{px}"] = gib(torch.cuda.max_memory_allocated())
        return out

    stage("eager_pipeline", eager_pipe)
    stage("eager_step_ms", lambda: {px: step_ms(tr, px) for px in (1024, 512)})

    def attention():
        out = {}
        for b in ("_native_cudnn", "_native_flash", "_native_efficient"):
            try:
                tr.set_attention_backend(b)
                out[b] = {px: step_ms(tr, px, n=5) for px in (1024, 512)}
            except Exception as e:  # noqa: BLE001
                out[b] = f"{type(e).__name__}: {e}"[:200]
        tr.set_attention_backend("native")
        return out

    stage("attention_backends_step_ms", attention)

    def fbcache():
        tr.enable_cache(FirstBlockCacheConfig(threshold=0.08))
        try:
            s, img = pipe_run(pipe, 1024, n=1)
        finally:
            tr.disable_cache()
        return {"s_1024": s, "psnr_vs_eager": psnr(img[0], refs[1024])}

    stage("fbcache_0.08_mechanism", fbcache)

    def vae():
        lat = torch.randn(1, 16, 128, 128, device="cuda", dtype=torch.bfloat16)
        out = {}
        with torch.inference_mode():
            out["decode_ms"] = time_ms(lambda: pipe.vae.decode(lat, return_dict=False), n=5)
            pipe.vae.to(memory_format=torch.channels_last)
            out["decode_channels_last_ms"] = time_ms(lambda: pipe.vae.decode(lat, return_dict=False), n=5)
            pipe.vae.to(memory_format=torch.contiguous_format)
        return out

    stage("vae_1024", vae)

    def text_encoders():
        out = {}
        with torch.inference_mode():
            enc = lambda dev: pipe.encode_prompt(PROMPT, None, device=dev, max_sequence_length=512)  # noqa: E731
            out["gpu_ms"] = time_ms(lambda: enc("cuda"), n=5)
            pipe.text_encoder.to("cpu")
            pipe.text_encoder_2.to("cpu")
            torch.set_num_threads(16)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                enc("cpu")
                times.append(time.perf_counter() - t)
            out["cpu_bf16_ms"] = [round(x * 1e3) for x in times]
            out["threads"] = torch.get_num_threads()
            pipe.text_encoder.to("cuda")
            pipe.text_encoder_2.to("cuda")
        return out

    stage("text_encoders", text_encoders, limit_s=120)

    def fused():
        tr.fuse_qkv_projections()
        return {px: step_ms(tr, px) for px in (1024, 512)}

    stage("fused_qkv_eager_step_ms", fused)

    def compile_regional():
        tr.compile_repeated_blocks(fullgraph=True)
        out = {"first_1024_s": first_call_s(tr, 1024), "first_512_s": first_call_s(tr, 512),
               "first_768_s": first_call_s(tr, 768)}
        out.update({f"step_ms_{px}": step_ms(tr, px) for px in (1024, 512)})
        return out

    stage("regional_compile_fused", compile_regional, limit_s=200)

    graphed = GraphedForward(tr)

    def graphs():
        graphed.install()
        out = {f"first_{px}_s": first_call_s(tr, px) for px in (1024, 512)}
        out.update({f"step_ms_{px}": step_ms(tr, px) for px in (1024, 512)})
        out.update(graphed.status())
        return out

    stage("cuda_graphs_on_compiled", graphs)

    def fast_pipe():
        out = pipeline_figures(pipe, refs, 3, "s_{px}", "psnr_vs_eager_{px}")
        t = time.perf_counter()
        pipe_run(pipe, 768, n=1)
        out["unseen_768_first_call_incl_2step_warm_s"] = round(time.perf_counter() - t, 2)
        out.update(graphed.status())
        return out

    stage("pipeline_compiled_graphs", fast_pipe, limit_s=150)

    def cfg_pipe():
        s, img = pipe_run(pipe, 512, n=1, negative_prompt="blurry", true_cfg_scale=1.5)
        return {"s_512_true_cfg": s}

    stage("pipeline_true_cfg_512", cfg_pipe)

    def batching():
        out = {"single_s": pipe_run(pipe, 512, n=2)[0]}
        t = time.perf_counter()
        out["batch4_s"] = pipe_run(pipe, 512, n=2, num_images_per_prompt=4)[0]
        out["batch4_total_incl_compile_s"] = round(time.perf_counter() - t, 1)
        out["speedup_vs_4_singles"] = round(4 * out["single_s"] / out["batch4_s"], 3)
        return out

    stage("batching_512", batching, limit_s=150)

    def low_memory():
        # The 24 GiB mode: text encoders on the CPU, transformer and VAE on the GPU, under a cap.
        graphed.bypass = True
        graphed.clear()
        pipe.text_encoder.to("cpu")
        pipe.text_encoder_2.to("cpu")
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(23.0 * 2**30 / total)
        torch.cuda.reset_peak_memory_stats()
        out = {}
        try:
            with torch.inference_mode():
                pe, ppe, _ = pipe.encode_prompt(PROMPT, None, device="cpu", max_sequence_length=512)
            sync()
            t = time.perf_counter()
            with torch.inference_mode():
                pe, ppe, _ = pipe.encode_prompt(PROMPT, None, device="cpu", max_sequence_length=512)
            pe, ppe = pe.to("cuda"), ppe.to("cuda")
            img = pipe(prompt_embeds=pe, pooled_prompt_embeds=ppe, width=1024, height=1024,
                       num_inference_steps=28, guidance_scale=3.5,
                       generator=torch.Generator("cpu").manual_seed(7)).images[0]
            sync()
            out["s_1024"] = round(time.perf_counter() - t, 2)
            out["psnr_vs_eager"] = psnr(img, refs[1024])
        finally:
            out["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
            out["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
            torch.cuda.set_per_process_memory_fraction(1.0)
        return out

    stage("low_memory_23GiB_cap", low_memory, limit_s=120, budget_s=585)


# --------------------------------------------------------------------------------------------- quant


def part_quant():
    from diffusers import FluxTransformer2DModel

    from flux_api.engine.graphs import GraphedForward
    from flux_api.engine.tiny import build_random_pipeline

    pipe = build_random_pipeline("full", device="cuda", dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    cfg = dict(pipe.transformer.config)
    log(f"built in {time.perf_counter() - T0:.0f} s")
    refs = {}

    def ref():
        out = {}
        for px in (1024, 512):
            s, img = pipe_run(pipe, px, n=1)
            refs[px] = img[0]
            out[f"s_{px}"] = s
        return out

    stage("bf16_eager_pipeline", ref)

    sd = {k: v.to("cpu") for k, v in pipe.transformer.state_dict().items()}
    pipe.transformer = None
    torch.cuda.empty_cache()

    def fresh():
        torch._dynamo.reset()
        pipe.transformer = None
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        with torch.device("meta"):
            tr = FluxTransformer2DModel.from_config(cfg)
        tr.load_state_dict(sd, assign=True)
        tr = tr.to("cuda", torch.bfloat16).eval()
        return tr, base

    def backend(quantize, fullgraph=True):
        def run():
            tr, base = fresh()
            quantize(tr)
            torch.cuda.empty_cache()
            out = {"transformer_gib": gib(torch.cuda.memory_allocated() - base)}
            out["eager_step_ms_1024"] = step_ms(tr, 1024, n=3)
            out["eager_step_ms_512"] = step_ms(tr, 512, n=3)
            pipe.transformer = tr
            t = time.perf_counter()
            tr.compile_repeated_blocks(fullgraph=fullgraph)
            out["compile_first_1024_s"] = first_call_s(tr, 1024)
            out["compile_first_512_s"] = first_call_s(tr, 512)
            out["compile_total_s"] = round(time.perf_counter() - t, 1)
            out.update({f"compiled_step_ms_{px}": step_ms(tr, px) for px in (1024, 512)})
            g = GraphedForward(tr).install()
            out.update({f"graphed_step_ms_{px}": step_ms(tr, px) for px in (1024, 512)})
            out["graphs"] = g.status()
            out.update(pipeline_figures(pipe, refs, 2, "pipeline_s_{px}", "psnr_vs_bf16_{px}"))
            return out

        return run

    def fp8(tr):
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        # set_inductor_config=False: torchao otherwise turns on coordinate-descent tuning, which made
        # the first compile take over four minutes.
        quantize_(tr, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))

    def bnb4(quant_type):
        def q(tr):  # the 494 linears of the blocks, as FACTS measured
            for block in list(tr.transformer_blocks) + list(tr.single_transformer_blocks):
                linears_to_4bit(block, quant_type)
        return q

    def int4(tr):
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        quantize_(tr, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d", set_inductor_config=False),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "blocks" in fqn)

    stage("bnb_fp4", backend(bnb4("fp4"), fullgraph=False), limit_s=170)
    stage("torchao_fp8", backend(fp8), limit_s=200)
    stage("torchao_int4_tinygemm", backend(int4), limit_s=150, budget_s=420)

    def t5_nf4():
        t5 = pipe.text_encoder_2
        before = torch.cuda.memory_allocated()
        linears_to_4bit(t5, "nf4")
        torch.cuda.empty_cache()
        with torch.inference_mode():
            ms = time_ms(lambda: pipe.encode_prompt(PROMPT, None, device="cuda", max_sequence_length=512), n=5)
        return {"encode_ms": ms, "t5_gib_saved": gib(before - torch.cuda.memory_allocated()),
                "t5_param_gib_now": gib(sum(p.numel() * p.element_size() for p in t5.parameters()))}

    stage("t5_nf4", t5_nf4, limit_s=90, budget_s=585)


def main():
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["bf16", "quant"], required=True)
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    OUT = Path(a.out)
    OUT.mkdir(parents=True, exist_ok=True)
    import diffusers

    R.update(part=a.part, gpu=torch.cuda.get_device_name(0), torch=torch.__version__, diffusers=diffusers.__version__)
    try:
        import torchao

        R["torchao"] = torchao.__version__
    except ImportError:
        pass
    torch.backends.cuda.matmul.allow_tf32 = True
    part_bf16() if a.part == "bf16" else part_quant()
    log("done")
    print(json.dumps(R, indent=1, default=str))


if __name__ == "__main__":
    main()
