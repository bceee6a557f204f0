"""Attention kernels at FLUX.1's shapes (issue 25 item 3): PyTorch's SDPA choice, FlashAttention-2, cuDNN,
memory-efficient, each timed with CUDA events over 50 calls after 10 warm-up calls, and its largest
difference from the math kernel in float32. One H100/H200; prints a table and writes JSON.

    python attention.py --out attention.json
"""

import argparse
import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {"sdpa default": None, "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
           "efficient": SDPBackend.EFFICIENT_ATTENTION}
# image tokens + 512 T5 tokens, 24 heads of 128: 1024 px -> 4096 + 512; 512 px -> 1024 + 512
SHAPES = {"1024px": 4096 + 512, "768px": 2304 + 512, "512px": 1024 + 512}


def timed(fn, n=50):
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="attention.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    rows = []
    for shape, seq in SHAPES.items():
        q, k, v = (torch.randn(1, 24, seq, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        with sdpa_kernel(SDPBackend.MATH):
            ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
        for name, kernel in KERNELS.items():
            def call():
                if kernel is None:
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel(kernel):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            try:
                ms = timed(call)
                diff = (call().float() - ref).abs().max().item()
                flops = 4 * seq * seq * 128 * 24
                rows.append({"shape": shape, "kernel": name, "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1),
                             "max_abs_diff_vs_math_fp32": diff})
            except Exception as e:  # a kernel that refuses the shape says so in the table
                rows.append({"shape": shape, "kernel": name, "error": f"{type(e).__name__}: {str(e)[:120]}"})
    print(f"GPU: {gpu}; torch {torch.__version__}; cuDNN {torch.backends.cudnn.version()}")
    print("| shape | kernel | ms a call | TFLOP/s | max abs diff vs fp32 math |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['kernel']} | {r.get('ms', '-')} | {r.get('tflops', '-')} | "
              f"{r.get('max_abs_diff_vs_math_fp32', r.get('error'))} |")
    json.dump({"gpu": gpu, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "rows": rows},
              open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
