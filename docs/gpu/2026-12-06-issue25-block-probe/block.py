"""Issue 25 probe: one FLUX.1 double block and one single block at full size (3072 wide, 24 heads of 128),
torchao fp8 row-wise as the FP4 service stores them, compiled as the service compiles its blocks
(fullgraph, dynamic=True), at 1024 px (4096 image + 512 text tokens). Run twice, in fresh processes: plain,
and with inductor's coordinate-descent tuning (what torchao's set_inductor_config=True turns on for the
stock+fp8 peer). Prints ms per block, the step they imply (19 double + 38 single blocks) and compile time.

    python block.py plain|cd [--small]      (--small: tiny sizes on the CPU, to check the calls only)
"""

import json
import os
import sys
import tempfile
import time

import torch


def main():
    mode, small = sys.argv[1], "--small" in sys.argv
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # a cold cache for each mode
    import torch._inductor.config as inductor

    if mode == "cd":
        inductor.coordinate_descent_tuning = True
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    dim, heads, head_dim, img, txt = (64, 2, 32, 64, 16) if small else (3072, 24, 128, 4096, 512)
    dev, dtype = ("cpu", torch.float32) if small else ("cuda", torch.bfloat16)
    blocks = {"double": FluxTransformerBlock(dim, heads, head_dim), "single": FluxSingleTransformerBlock(dim, heads, head_dim)}
    for name, b in blocks.items():
        b.to(dev, dtype).eval()
        if not small:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

            quantize_(b, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))
            b.compile(fullgraph=True, dynamic=True)
    g = torch.Generator(dev).manual_seed(0)
    hs = torch.randn(1, img, dim, device=dev, dtype=dtype, generator=g)
    enc = torch.randn(1, txt, dim, device=dev, dtype=dtype, generator=g)
    temb = torch.randn(1, dim, device=dev, dtype=dtype, generator=g)
    freqs = torch.randn(img + txt, head_dim, device=dev, dtype=torch.float32, generator=g)
    rotary = (freqs.cos(), freqs.sin())
    out = {"mode": mode, "gpu": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
    with torch.inference_mode():
        for name, b in blocks.items():
            t0 = time.perf_counter()
            b(hidden_states=hs, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rotary)
            if dev == "cuda":
                torch.cuda.synchronize()
            out[f"{name}_first_call_s"] = round(time.perf_counter() - t0, 1)
            for _ in range(5):
                b(hidden_states=hs, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rotary)
            n = 3 if small else 50
            if dev == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
            t0 = time.perf_counter()
            for _ in range(n):
                b(hidden_states=hs, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rotary)
            if dev == "cuda":
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / n
            else:
                ms = (time.perf_counter() - t0) * 1e3 / n
            out[f"{name}_ms"] = round(ms, 3)
    out["step_ms_implied"] = round(19 * out["double_ms"] + 38 * out["single_ms"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
