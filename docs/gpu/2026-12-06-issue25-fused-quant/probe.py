"""Issue 25 probe: the fused fp8 input quantization (flux_api/engine/fp8_fused.py, fp8_rows.py) on one FLUX.1
double block and one single block at full size (3072 wide, 24 heads of 128, 1024 px: 4096 + 512 tokens), as
the FP4 service builds them: torchao fp8 row-wise, the LoRA slot (rank 64) wrapped around every Linear, each
block's forward compiled (fullgraph, dynamic=True; engine.speed.compile_blocks' way). Unfused (the service
before) against fused, in one process:

1. the kernel against its torch reference (fp8_rows.reference, torchao's arithmetic) on FLUX-sized rows:
   the scales and the fp8 bytes, how many differ;
2. each block's output fused against unfused (both compiled), and against eager torchao;
3. ms per block (CUDA events, 50 calls after 5), slot off and slot on everywhere (random LoRA weights);
4. the kernels of one call of each (torch profiler), the top ones by time.

    python probe.py [--small]     (--small: tiny sizes on the CPU, to check the calls only)
"""

import copy
import json
import os
import sys
import tempfile
import time

import torch


def timed(fn, n, cuda):
    for _ in range(5):
        fn()
    if cuda:
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if cuda:
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / n
    return (time.perf_counter() - t0) * 1e3 / n


def diff(a, b):
    a, b = a.float(), b.float()
    mse = (a - b).pow(2).mean().item()
    peak = b.abs().max().item()
    psnr = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak * peak / mse)).item()
    return {"max_abs": round((a - b).abs().max().item(), 5), "psnr_db": round(psnr, 2), "equal": torch.equal(a, b)}


def main():
    small = "--small" in sys.argv
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    from flux_api.engine import fp8_fused, fp8_rows
    from flux_api.engine.lora_slot import LoraSlot

    if small:  # the CPU: torchao refuses fp8 below sm_89, torch's CPU _scaled_mm runs it (a check of the calls)
        import torchao.quantization.quant_api as qa

        qa._check_hardware_support = lambda g: None
    dim, heads, hd, img, txt = (128, 2, 64, 64, 16) if small else (3072, 24, 128, 4096, 512)
    dev = "cpu" if small else "cuda"
    cuda = dev == "cuda"
    dt = torch.bfloat16
    out = {"gpu": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    import diffusers
    import torchao

    out["diffusers"], out["torchao"] = diffusers.__version__, torchao.__version__
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    g = torch.Generator(dev).manual_seed(0)

    # 1. the kernel against the reference, on rows shaped like the two fused inputs
    kernel = {}
    for name, ka, kb in (("single proj_out", dim, 4 * dim), ("ff.net.2", 0, 4 * dim)):
        rows = img + txt
        a = (torch.randn(1, rows, ka, device=dev, dtype=dt, generator=g) * 0.5) if ka else None
        b = torch.randn(1, rows, kb, device=dev, dtype=dt, generator=g) * 2.0
        q_ref, s_ref = fp8_rows.reference(a, b, True)
        q, s = fp8_rows.quantize_rows(a, b, True)
        bad = (q.view(torch.uint8) != q_ref.view(torch.uint8))
        kernel[name] = {"rows": rows, "width": ka + kb, "scales_equal": torch.equal(s, s_ref),
                        "fp8_bytes_differing": int(bad.sum()), "of": bad.numel(),
                        "dequant_vs_ref": diff(q.float() * s, q_ref.float() * s_ref)}
        kernel[name]["ms_kernel"] = round(timed(lambda: fp8_rows.quantize_rows(a, b, True), 50, cuda), 4)
        kernel[name]["ms_reference_eager"] = round(timed(lambda: fp8_rows.reference(a, b, True), 20, cuda), 4)
        cref = torch.compile(fp8_rows.reference, dynamic=True)
        kernel[name]["ms_reference_compiled"] = round(timed(lambda: cref(a, b, True), 50, cuda), 4)
    out["kernel"] = kernel
    print(json.dumps(out["kernel"], indent=1), flush=True)

    # 2-4. the blocks
    base = torch.nn.ModuleList([FluxTransformerBlock(dim, heads, hd), FluxSingleTransformerBlock(dim, heads, hd)])
    base.to(dev, dt).eval()
    quantize_(base, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    models = {}
    for mode in ("unfused", "fused"):
        m = copy.deepcopy(base)
        slot = LoraSlot(m, 64, dt)
        for name, layer in slot.layers.items():  # random LoRA weights (the same in both), used only when on
            if mode == "unfused":
                torch.nn.init.normal_(layer.lora_A, std=0.02, generator=g)
                torch.nn.init.normal_(layer.lora_B, std=0.02, generator=g)
            else:
                first = models["unfused"][1].layers[name]
                layer.lora_A.copy_(first.lora_A)
                layer.lora_B.copy_(first.lora_B)
        if mode == "fused":
            out["fused_layers"] = fp8_fused.install(m)
        eager = copy.deepcopy(m) if mode == "unfused" else None
        for b in m:
            b.forward = torch.compile(b.forward, fullgraph=True, dynamic=True)
        models[mode] = (m, slot, eager)
    hs = torch.randn(1, img, dim, device=dev, dtype=dt, generator=g)
    enc = torch.randn(1, txt, dim, device=dev, dtype=dt, generator=g)
    temb = torch.randn(1, dim, device=dev, dtype=dt, generator=g)
    freqs = torch.randn(img + txt, hd, device=dev, dtype=torch.float32, generator=g)
    kw = dict(hidden_states=hs, encoder_hidden_states=enc, temb=temb, image_rotary_emb=(freqs.cos(), freqs.sin()))
    blocks = {}
    with torch.inference_mode():
        for lora in (False, True):
            for i, name in enumerate(("double", "single")):
                row = {}
                results = {}
                for mode, (m, slot, eager) in models.items():
                    slot.enable(lora, "all")
                    t0 = time.perf_counter()
                    results[mode] = m[i](**kw)
                    if cuda:
                        torch.cuda.synchronize()
                    row[f"{mode}_first_call_s"] = round(time.perf_counter() - t0, 1)
                    row[f"{mode}_ms"] = round(timed(lambda: m[i](**kw), 3 if small else 50, cuda), 3)
                    if eager is not None:
                        for layer in eager.modules():
                            if hasattr(layer, "lora_A"):
                                layer.enabled = lora
                        results["eager"] = eager[i](**kw)
                row["fused_vs_unfused"] = [diff(x, y) for x, y in zip(results["fused"], results["unfused"])]
                row["fused_vs_eager"] = [diff(x, y) for x, y in zip(results["fused"], results["eager"])]
                row["unfused_vs_eager"] = [diff(x, y) for x, y in zip(results["unfused"], results["eager"])]
                blocks[f"{name}{' lora' if lora else ''}"] = row
                print(name, "lora" if lora else "", json.dumps(row), flush=True)
        out["blocks"] = blocks
        for lora in ("", " lora"):
            ms = {m: 19 * blocks["double" + lora][f"{m}_ms"] + 38 * blocks["single" + lora][f"{m}_ms"] for m in models}
            out[f"step_ms_implied{lora.replace(' ', '_')}"] = {k: round(v, 1) for k, v in ms.items()}
        # 4. the kernels of one call of each block, slot off
        if cuda:
            from torch.profiler import ProfilerActivity, profile

            prof_out = {}
            for mode, (m, slot, _) in models.items():
                slot.enable(False)
                for i, name in enumerate(("double", "single")):
                    with profile(activities=[ProfilerActivity.CUDA]) as p:
                        m[i](**kw)
                        torch.cuda.synchronize()
                    rows = sorted(p.key_averages(), key=lambda e: -e.device_time_total)[:14]
                    prof_out[f"{mode} {name}"] = [(e.key[:110], round(e.device_time_total / 1e3, 4), e.count) for e in rows]
            out["profile_ms"] = prof_out
    print(json.dumps({k: v for k, v in out.items() if k not in ("blocks", "profile_ms", "kernel")}, indent=1))
    print(json.dumps(out.get("profile_ms", {}), indent=1))
    with open(os.environ.get("PROBE_OUT", "probe.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
