"""Issue 25 probe, second step: variants of the row-wise fp8 quantization kernel at FLUX's shapes (4608 rows;
cat([3072 attention, gelu(12288 mlp)]) and gelu(12288)), each checked byte for byte against torchao's
arithmetic (flux_api.engine.fp8_rows.reference) and timed (CUDA events, 100 calls after 10):

- one_pass: the first kernel (a row in registers, [16, 1024] tile), num_warps 8/16/32; one_pass_bf16: the
  row kept in bf16 while its amax is taken (half the registers);
- two_pass: a loop over chunks of the row (amax, then re-read from L2 and write), BLOCK 1024/4096, warps 4/8;
- each with FAST (x * (1/scale) and tanh from exp2: not torchao's exact arithmetic; the bytes that differ counted).
Prints a table, writes kernels.json.    python kernels.py
"""

import json
import os

import torch
import triton
import triton.language as tl

from flux_api.engine.fp8_rows import reference

try:
    from triton.language.extra import libdevice
except ImportError:
    from triton.language.extra.cuda import libdevice

BETA = tl.constexpr(0.7978845608028654)


@triton.jit
def _gelu(x, FAST: tl.constexpr):
    inner = BETA * (x + 0.044715 * x * x * x)
    if FAST:
        t = 1.0 - 2.0 / (tl.exp2(inner * 2.8853900817779268) + 1.0)
    else:
        t = libdevice.tanh(inner)
    return (0.5 * x * (1.0 + t)).to(tl.bfloat16).to(tl.float32)


@triton.jit
def _quant(x, scale, FAST: tl.constexpr):
    if FAST:
        y = x * (1.0 / scale)
    else:
        y = tl.math.div_rn(x, scale)
    return tl.clamp(y, -448.0, 448.0).to(tl.float8e4nv)


@triton.jit
def two_pass(a_ptr, b_ptr, q_ptr, s_ptr, a_stride, b_stride, KA: tl.constexpr, KB: tl.constexpr,
             BLOCK: tl.constexpr, GELU: tl.constexpr, FAST: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in tl.range(0, KA, BLOCK):
        col = start + offs
        x = tl.load(a_ptr + row * a_stride + col, mask=col < KA, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    for start in tl.range(0, KB, BLOCK):
        col = start + offs
        x = tl.load(b_ptr + row * b_stride + col, mask=col < KB, other=0.0).to(tl.float32)
        if GELU:
            x = _gelu(x, FAST)
        amax = tl.maximum(amax, tl.abs(x))
    m = tl.max(amax, axis=0)
    scale = tl.math.div_rn(m, 448.0).to(tl.bfloat16).to(tl.float32)
    for start in tl.range(0, KA, BLOCK):
        col = start + offs
        x = tl.load(a_ptr + row * a_stride + col, mask=col < KA, other=0.0).to(tl.float32)
        tl.store(q_ptr + row * (KA + KB) + col, _quant(x, scale, FAST), mask=col < KA)
    for start in tl.range(0, KB, BLOCK):
        col = start + offs
        x = tl.load(b_ptr + row * b_stride + col, mask=col < KB, other=0.0).to(tl.float32)
        if GELU:
            x = _gelu(x, FAST)
        tl.store(q_ptr + row * (KA + KB) + KA + col, _quant(x, scale, FAST), mask=col < KB)
    tl.store(s_ptr + row, scale)


@triton.jit
def one_pass(a_ptr, b_ptr, q_ptr, s_ptr, a_stride, b_stride, KA: tl.constexpr, KB: tl.constexpr,
             CHUNK: tl.constexpr, NCHUNK: tl.constexpr, GELU: tl.constexpr, FAST: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, NCHUNK)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
    in_a = col < KA
    in_b = (col >= KA) & (col < KA + KB)
    xb = tl.load(b_ptr + row * b_stride + (col - KA), mask=in_b, other=0.0).to(tl.float32)
    if GELU:
        xb = _gelu(xb, FAST)
    if KA > 0:
        xa = tl.load(a_ptr + row * a_stride + col, mask=in_a, other=0.0).to(tl.float32)
        x = tl.where(in_a, xa, xb)
    else:
        x = xb
    m = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
    scale = tl.math.div_rn(m, 448.0).to(tl.bfloat16).to(tl.float32)
    tl.store(q_ptr + row * (KA + KB) + col, _quant(x, scale, FAST), mask=in_a | in_b)
    tl.store(s_ptr + row, scale)


@triton.jit
def one_pass_bf16(a_ptr, b_ptr, q_ptr, s_ptr, a_stride, b_stride, KA: tl.constexpr, KB: tl.constexpr,
                  CHUNK: tl.constexpr, NCHUNK: tl.constexpr, GELU: tl.constexpr, FAST: tl.constexpr):
    # As one_pass, but the row waits for its amax in bf16 (what the GELU's output is rounded to anyway):
    # half the registers, so more rows in flight on each SM.
    row = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, NCHUNK)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
    in_a = col < KA
    in_b = (col >= KA) & (col < KA + KB)
    xb = tl.load(b_ptr + row * b_stride + (col - KA), mask=in_b, other=0.0)
    if GELU:
        xb = _gelu(xb.to(tl.float32), FAST).to(tl.bfloat16)
    if KA > 0:
        xa = tl.load(a_ptr + row * a_stride + col, mask=in_a, other=0.0)
        x = tl.where(in_a, xa, xb)
    else:
        x = xb
    m = tl.max(tl.max(tl.abs(x).to(tl.float32), axis=1), axis=0)
    scale = tl.math.div_rn(m, 448.0).to(tl.bfloat16).to(tl.float32)
    tl.store(q_ptr + row * (KA + KB) + col, _quant(x.to(tl.float32), scale, FAST), mask=in_a | in_b)
    tl.store(s_ptr + row, scale)


def run(kind, a, b, warps, block, fast):
    b2 = b.reshape(-1, b.shape[-1])
    a2 = a.reshape(-1, a.shape[-1]) if a is not None else None
    ka, kb, rows = (a2.shape[1] if a2 is not None else 0), b2.shape[1], b2.shape[0]
    q = torch.empty(rows, ka + kb, device=b.device, dtype=torch.float8_e4m3fn)
    s = torch.empty(rows, 1, device=b.device, dtype=torch.float32)
    args = (a2 if a2 is not None else b2, b2, q, s, a2.stride(0) if a2 is not None else 0, b2.stride(0))
    if kind == "two_pass":
        two_pass[(rows,)](*args, KA=ka, KB=kb, BLOCK=block, GELU=True, FAST=fast, num_warps=warps)
    else:
        chunk = 1024
        nchunk = triton.next_power_of_2((ka + kb) // chunk)
        kernel = one_pass_bf16 if kind == "one_pass_bf16" else one_pass
        kernel[(rows,)](*args, KA=ka, KB=kb, CHUNK=chunk, NCHUNK=nchunk, GELU=True, FAST=fast, num_warps=warps)
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
        cref = torch.compile(reference, dynamic=True)
        ideal_bytes = b.numel() * 2 + (a.numel() * 2 if a is not None else 0) + qr.numel()
        out["rows"].append({"shape": name, "variant": "inductor (compiled reference)", "us": round(timed(lambda: cref(a, b, True)), 1)})
        variants = [(k, w, 0, f) for k in ("one_pass", "one_pass_bf16") for w in (8, 16, 32) for f in (False, True)]
        variants += [("two_pass", w, blk, f) for w in (4, 8) for blk in (1024, 4096) for f in (False, True)]
        for kind, w, blk, fast in variants:
            try:
                q, s = run(kind, a, b, w, blk, fast)
                differ = int((q.view(torch.uint8) != qr.view(torch.uint8)).sum())
                us = timed(lambda: run(kind, a, b, w, blk, fast))
                row = {"shape": name, "variant": f"{kind} warps={w}" + (f" block={blk}" if blk else "") + (" FAST" if fast else ""),
                       "us": round(us, 1), "TB/s": round(ideal_bytes / us / 1e6, 2), "bytes_differing": differ,
                       "scales_equal": torch.equal(s, sr)}
            except Exception as e:  # a variant that does not compile is a row too
                row = {"shape": name, "variant": f"{kind} warps={w} block={blk} fast={fast}", "error": repr(e)[:200]}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    with open(os.environ.get("KERNELS_OUT", "kernels.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
