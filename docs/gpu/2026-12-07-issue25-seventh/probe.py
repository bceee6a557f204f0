"""cuDNN's fp8 attention (engine/fp8_attention.py) at FLUX.1's shapes (24 heads of 128; 512 text tokens + 4096
image tokens at 1024 px, + 2304 at 768 px), against PyTorch's SDPA in bf16 (its own choice: cuDNN's on an H100).
Times (CUDA events, median of 50 after warm-up): the kernel alone on e4m3 inputs, and the
per-tensor quantization of q, k, v in eager torch (the service compiles it with RoPE). Errors against bf16
attention and against the fp8 reference. Prints JSON lines (run.sh then runs tests/test_fp8_attention.py)."""

import json
import statistics
import traceback

import torch

from flux_api.engine import fp8_attention  # noqa: E402

dev = "cuda"
H, D, TXT = 24, 128, 512


def timed(fn, n=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000)
    return round(statistics.median(times), 1)


def report(**kw):
    print("PROBE", json.dumps(kw), flush=True)


import cudnn  # noqa: E402

report(what="versions", problem=fp8_attention.problem(torch.cuda.get_device_capability()), cudnn_backend=cudnn.backend_version_string(),
       frontend=getattr(cudnn, "__version__", "?"), gpu=torch.cuda.get_device_name())


def sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


for img in (4096, 2304):
    S = TXT + img
    try:
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = ((torch.randn(1, S, H, D, generator=g, device=dev) * s).to(torch.bfloat16) for s in (1.0, 1.0, 4.0))
        (q8, dq), (k8, dk), (v8, dv) = (fp8_attention.quantize(t) for t in (q, k, v))
        scale = D ** -0.5
        bf16 = sdpa(q, k, v).float()
        got = fp8_attention.attention(q, k, v).float()
        ref = fp8_attention.reference(q, k, v).float()
        report(what="accuracy", tokens=S, rel_err_vs_bf16=((got - bf16).norm() / bf16.norm()).item(),
               rel_err_vs_reference=((got - ref).norm() / ref.norm()).item(), finite=bool(torch.isfinite(got).all()))
        report(what="kernel", tokens=S, sdpa_bf16_us=timed(lambda: sdpa(q, k, v)),
               cudnn_fp8_us=timed(lambda: fp8_attention._attention(q8, k8, v8, dq, dk, dv, 1 / dv, scale)),
               quantize_eager_us=timed(lambda: [fp8_attention.quantize(t) for t in (q, k, v)]))
    except Exception:
        report(what="kernel-failed", tokens=S, error=traceback.format_exc()[-2000:])
