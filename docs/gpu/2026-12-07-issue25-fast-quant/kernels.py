"""Issue 25, 2026-12-07: the row-wise fp8 quantization kernel of flux_api/engine/fp8_rows.py (run 1: two passes over
the row; run 2 on: the row held in registers, one pass; fast GELU and reciprocal) against inductor and variants, at FLUX's shapes: 4608 rows (1024 px) of
cat([3072 attention, gelu(12288 mlp)]) (a single block's proj_out input) and of gelu(12288) (a double block's
ff.net.2 input). Each is checked against torchao's arithmetic (fp8_rows.reference: fp8 bytes that differ,
scales that differ) and timed (CUDA events, 100 calls after 10). Variants:

- two_pass BLOCK x warps, FAST (the service's arithmetic) or EXACT (CUDA's tanhf, IEEE division);
- one_pass: the whole row in registers (the first kernel of 2026-12-06), in fp32 or held in bf16, FAST or EXACT.
Prints one JSON line a variant, writes $KERNELS_OUT (kernels.json).      python kernels.py
"""

import json
import os

import torch
import triton
import triton.language as tl

from flux_api.engine import fp8_rows
from flux_api.engine.fp8_rows import _gelu_tanh, reference

try:
    from triton.language.extra import libdevice
except ImportError:
    from triton.language.extra.cuda import libdevice

BETA = tl.constexpr(0.7978845608028654)


@triton.jit
def _gelu(x, EXACT: tl.constexpr):
    if EXACT:  # torch's own: x cubed first, CUDA's tanhf
        y = (0.5 * x * (1.0 + libdevice.tanh(BETA * (x + 0.044715 * (x * x * x))))).to(tl.bfloat16).to(tl.float32)
    else:
        y = _gelu_tanh(x)
    return y


@triton.jit
def _quant(x, scale, inv, EXACT: tl.constexpr):
    if EXACT:
        y = tl.math.div_rn(x, scale)
    else:
        y = x * inv
    return tl.clamp(y, -448.0, 448.0).to(tl.float8e4nv)


@triton.jit
def two_pass(a_ptr, b_ptr, q_ptr, s_ptr, a_stride, b_stride, KA: tl.constexpr, KB: tl.constexpr,
             BLOCK: tl.constexpr, EXACT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in tl.range(0, KA, BLOCK):
        x = tl.load(a_ptr + row * a_stride + start + offs, mask=start + offs < KA, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    for start in tl.range(0, KB, BLOCK):
        x = tl.load(b_ptr + row * b_stride + start + offs, mask=start + offs < KB, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(_gelu(x, EXACT)))
    scale = tl.math.div_rn(tl.max(amax, axis=0), 448.0).to(tl.bfloat16).to(tl.float32)
    inv = tl.where(scale > 0.0, tl.math.div_rn(1.0, scale), 0.0)
    for start in tl.range(0, KA, BLOCK):
        x = tl.load(a_ptr + row * a_stride + start + offs, mask=start + offs < KA, other=0.0).to(tl.float32)
        tl.store(q_ptr + row * (KA + KB) + start + offs, _quant(x, scale, inv, EXACT), mask=start + offs < KA)
    for start in tl.range(0, KB, BLOCK):
        x = tl.load(b_ptr + row * b_stride + start + offs, mask=start + offs < KB, other=0.0).to(tl.float32)
        tl.store(q_ptr + row * (KA + KB) + KA + start + offs, _quant(_gelu(x, EXACT), scale, inv, EXACT),
                 mask=start + offs < KB)
    tl.store(s_ptr + row, scale)


@triton.jit
def one_pass(a_ptr, b_ptr, q_ptr, s_ptr, a_stride, b_stride, KA: tl.constexpr, KB: tl.constexpr,
             CHUNK: tl.constexpr, NCHUNK: tl.constexpr, EXACT: tl.constexpr, BF16: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, NCHUNK)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
    in_a = col < KA
    in_b = (col >= KA) & (col < KA + KB)
    xb = _gelu(tl.load(b_ptr + row * b_stride + (col - KA), mask=in_b, other=0.0).to(tl.float32), EXACT)
    if BF16:  # the row waits for its amax in bf16 (the GELU's output is bf16 anyway): half the registers
        xb = xb.to(tl.bfloat16)
    if KA > 0:
        xa = tl.load(a_ptr + row * a_stride + col, mask=in_a, other=0.0)
        if not BF16:
            xa = xa.to(tl.float32)
        x = tl.where(in_a, xa, xb)
    else:
        x = xb
    scale = tl.math.div_rn(tl.max(tl.max(tl.abs(x).to(tl.float32), axis=1), axis=0), 448.0).to(tl.bfloat16).to(tl.float32)
    inv = tl.where(scale > 0.0, tl.math.div_rn(1.0, scale), 0.0)
    tl.store(q_ptr + row * (KA + KB) + col, _quant(x.to(tl.float32), scale, inv, EXACT), mask=in_a | in_b)
    tl.store(s_ptr + row, scale)


def run(kind, a, b, warps, block, exact, bf16=False):
    if kind == "service":
        return fp8_rows.launch(a, b, True)
    b2 = b.reshape(-1, b.shape[-1])
    a2 = a.reshape(-1, a.shape[-1]) if a is not None else None
    ka, kb, rows = (a2.shape[1] if a2 is not None else 0), b2.shape[1], b2.shape[0]
    q = torch.empty(rows, ka + kb, device=b.device, dtype=torch.float8_e4m3fn)
    s = torch.empty(rows, 1, device=b.device, dtype=torch.float32)
    args = (a2 if a2 is not None else b2, b2, q, s, a2.stride(0) if a2 is not None else 0, b2.stride(0))
    if kind == "two_pass":
        two_pass[(rows,)](*args, KA=ka, KB=kb, BLOCK=block, EXACT=exact, num_warps=warps)
    else:
        one_pass[(rows,)](*args, KA=ka, KB=kb, CHUNK=1024, NCHUNK=triton.next_power_of_2((ka + kb) // 1024),
                          EXACT=exact, BF16=bf16, num_warps=warps)
    return q, s


def timed(fn, n=100):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n * 1e3


def main():
    g = torch.Generator("cuda").manual_seed(0)
    rows = 4608
    shapes = {"single proj_out": (torch.randn(1, 24, rows, 128, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2).reshape(1, rows, 3072) * 0.5,
                                  torch.randn(1, rows, 12288, device="cuda", dtype=torch.bfloat16, generator=g) * 2),
              "ff.net.2": (None, torch.randn(1, rows, 12288, device="cuda", dtype=torch.bfloat16, generator=g) * 2)}
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    for name, (a, b) in shapes.items():
        qr, sr = reference(a, b, True)
        cref = torch.compile(reference, dynamic=False)
        ideal_bytes = b.numel() * 2 + (a.numel() * 2 if a is not None else 0) + qr.numel()
        qc, sc = cref(a, b, True)
        variants = [("inductor (compiled reference)", lambda: cref(a, b, True))]
        variants.append((f"service: one_pass tile={fp8_rows.tile(a.shape[-1] if a is not None else 0, b.shape[-1])} FAST",
                         lambda: run("service", a, b, 0, 0, False)))
        for exact in (False, True):
            for block in (1024, 2048, 4096):
                for warps in (2, 4, 8, 16):
                    if 32 * warps <= block:
                        variants.append((f"two_pass block={block} warps={warps} {'EXACT' if exact else 'FAST'}",
                                         lambda k=("two_pass", a, b, warps, block, exact): run(*k)))
            for bf16 in (False, True):
                for warps in (8, 16, 32):
                    variants.append((f"one_pass{'_bf16' if bf16 else ''} warps={warps} {'EXACT' if exact else 'FAST'}",
                                     lambda k=("one_pass", a, b, warps, 0, exact, bf16): run(*k)))
        for label, fn in variants:
            try:
                q, s = fn()
                row = {"shape": name, "variant": label, "us": round(timed(fn), 1),
                       "fp8_bytes_differing_from_torchao": int((q.view(torch.uint8) != qr.view(torch.uint8)).sum()),
                       "scales_differing": int((s != sr).sum()), "of_bytes": q.numel()}
                row["TB/s"] = round(ideal_bytes / row["us"] / 1e6, 2)
            except Exception as e:  # a variant that does not compile is a row too
                row = {"shape": name, "variant": label, "error": repr(e)[:300]}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    with open(os.environ.get("KERNELS_OUT", "kernels.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
