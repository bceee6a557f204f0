"""fuse_rope's kernel against inductor's code for the same step, at FLUX.1's 1024 px shapes (B 1, 24 heads of 128,
512 text + 4096 image tokens), q/k/v as views of one fused projection (fuse_qkv, FP4's default). Times (CUDA events,
median of 50 after warm-up): the prep alone (kernel vs torch.compile of diffusers' ops, both writing (B, H, S, D)),
and prep + cuDNN attention in one compiled function each way, single block and double block. Prints JSON."""

import json
import statistics

import torch

from flux_api.engine import qk_rope

torch.manual_seed(0)
dev = "cuda"
H, D, TXT, IMG = 24, 128, 512, 4096
W = H * D


def views(n):
    return (torch.randn(1, n, 3 * W, device=dev) * 3).to(torch.bfloat16).chunk(3, -1)


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


weights = [(torch.rand(D, device=dev) + 0.5).to(torch.bfloat16) for _ in range(4)]
freqs = torch.randn(TXT + IMG, D, device=dev)
cos, sin = freqs.cos().contiguous(), freqs.sin().contiguous()
out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
for name, (q, k, v), txt in (("single", views(TXT + IMG), None), ("double", views(IMG), views(TXT))):
    def ref():
        return tuple(t.transpose(1, 2).contiguous() for t in qk_rope.reference(q, k, v, txt, weights, 1e-6, cos, sin, D))

    def fused():
        return qk_rope.launch(q, k, v, txt, weights, 1e-6, cos, sin, D)

    def attn_ref():
        a, b, c = qk_rope.reference(q, k, v, txt, weights, 1e-6, cos, sin, D)
        return torch.nn.functional.scaled_dot_product_attention(a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2))

    def attn_fused():
        a, b, c = qk_rope.qk_norm_rope(q, k, v, txt, weights, 1e-6, cos, sin, D)
        return torch.nn.functional.scaled_dot_product_attention(a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2))

    inductor, ai, af = (torch.compile(f, fullgraph=True) for f in (ref, attn_ref, attn_fused))
    r = out[name] = {}
    try:
        got, want = fused(), inductor()
        r["kernel_vs_inductor"] = {"max_abs": [(g.float() - w.float()).abs().max().item() for g, w in zip(got, want)],
                                   "fraction_differ": [(g != w).float().mean().item() for g, w in zip(got, want)]}
        r["prep_us"] = {"inductor": timed(inductor)}
        for warps in (4, 8, 16):  # qk_rope.WARPS (4 in the service): not tuned before this probe
            qk_rope.WARPS = warps
            r["prep_us"][f"kernel_{warps}_warps"] = timed(fused)
        qk_rope.WARPS = 4
        ya, yb = ai(), af()
        r["attention_out_max_abs"] = (ya.float() - yb.float()).abs().max().item()
        r["prep_plus_attention_us"] = {"inductor": timed(ai), "kernel": timed(af)}
    except Exception as e:  # one case's failure is recorded; the other still runs
        r["error"] = f"{type(e).__name__}: {str(e)[:400]}"
    print(name, json.dumps(r), flush=True)
print("RESULT", json.dumps(out))
