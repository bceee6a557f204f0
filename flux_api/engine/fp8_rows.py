"""Row-wise fp8 quantization of an activation, read once from memory: the op the fused fp8 blocks use (fp8_fused.py).

`quantize_rows(a, b, gelu)` is torchao's per-row fp8 quantization (PerRow, e4m3) of
`cat([a, gelu_tanh(b)], -1)` (`a` may be None): per row, amax = max |x|, scale = amax / 448 rounded to
bf16 as torchao's bf16 arithmetic rounds it, q = clamp(x / scale, +-448) cast to e4m3. It returns
(q [rows, width] e4m3, scale [rows, 1] fp32), what `torch._scaled_mm` takes.

On a CUDA GPU one Triton program holds a row in registers (a row of FLUX's widest input, 15,360 values,
fits), applies the GELU, takes the amax and writes the fp8 row and its scale: the row comes from memory
once, where inductor's two kernels read it twice at about a third of the bandwidth (the H100 profile of
2026-12-06). On an H100 at 1024 px: 89.2 us against 245.8 us (inductor's code for the same arithmetic) for a
single block's input, 69.1 against 174.3 us for a feed-forward's
(docs/gpu/2026-12-07-issue25-fast-quant/h100-kernels-run2.json). Its arithmetic is torchao's with two fast
steps, on purpose: the GELU's tanh from one exp2 and a fast division, and x / scale as x times the row's
1 / scale (torchao's exact arithmetic, CUDA's tanhf and IEEE division, made the first kernel of 2026-12-06 no
faster than inductor: 230 us held in registers, 192 us in two passes). An fp8 byte can differ by one step from
torchao's where a value lies on a rounding edge: 0.012-0.014% of them at FLUX's shapes, every scale equal.
Where torchao would give NaN, this does not: a row of zeros gives zeros (torchao divides 0 by 0), and a NaN
or inf value gives +-448 (Triton's max and clamp drop NaN). A row whose scale is subnormal (its amax below
about 5e-36, where 1 / scale overflows) is divided as torchao divides: written after a review, not run on a GPU.
Elsewhere (the CPU, or a GPU without Triton) `reference`: torchao's exact arithmetic in torch. Triton's CPU
interpreter cannot check the kernel (it casts to fp8 wrongly), so the CPU tests check the reference.
"""

from __future__ import annotations

import math

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(float8_e4m3fn).max
_SQRT_2_OVER_PI = 0.7978845608028654


def reference(a: torch.Tensor | None, b: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's arithmetic in torch, on any device: what torchao's Float8Tensor.from_hp(x, PerRow) does
    with x = cat([a, gelu(b)]) in bf16 (eager: each op rounds to bf16)."""
    x = torch.nn.functional.gelu(b, approximate="tanh") if gelu else b
    if a is not None:
        x = torch.cat([a, x], dim=-1)
    x = x.reshape(-1, x.shape[-1])
    scale = (x.abs().amax(dim=-1, keepdim=True) / FP8_MAX).to(torch.float32)
    q = (x.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


try:  # a CUDA build of torch brings Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = None
HAS_TRITON = triton is not None

if HAS_TRITON:

    _BETA = tl.constexpr(_SQRT_2_OVER_PI)  # a jitted function reads globals only as constexpr
    _TWO_OVER_LN2 = tl.constexpr(2.0 / math.log(2.0))
    _MAX = tl.constexpr(FP8_MAX)
    _FLT_MIN = tl.constexpr(1.1754943508222875e-38)  # the smallest normal fp32 (and bf16) value

    @triton.jit
    def _gelu_tanh(x):
        # torch's tanh GELU in its own order (x cubed first), rounded to bf16 as torch's output is; tanh(u) as
        # 1 - 2 / (e^2u + 1) with the hardware's exp2 and Triton's fast fp32 division (e^2u = inf gives 1).
        inner = _BETA * (x + 0.044715 * (x * x * x))
        t = 1.0 - tl.math.fdiv(2.0, tl.exp2(inner * _TWO_OVER_LN2) + 1.0, ieee_rounding=False)
        return (0.5 * x * (1.0 + t)).to(tl.bfloat16).to(tl.float32)

    @triton.jit
    def _rows_kernel(a_ptr, b_ptr, q_ptr, s_ptr, a_stride, b_stride,
                     KA: tl.constexpr, KB: tl.constexpr, CHUNK: tl.constexpr, NCHUNK: tl.constexpr,
                     GELU: tl.constexpr):
        # One row per program, held in registers as [NCHUNK, CHUNK] (powers of two): columns [0, KA) from a,
        # [KA, KA + KB) from (the GELU of) b, the rest masked off.
        row = tl.program_id(0).to(tl.int64)
        col = tl.arange(0, NCHUNK)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
        in_a = col < KA
        in_b = (col >= KA) & (col < KA + KB)
        x = tl.load(b_ptr + row * b_stride + (col - KA), mask=in_b, other=0.0).to(tl.float32)
        if GELU:
            x = _gelu_tanh(x)
        if KA > 0:
            x = tl.where(in_a, tl.load(a_ptr + row * a_stride + col, mask=in_a, other=0.0).to(tl.float32), x)
        # torchao divides the bf16 amax by 448 in bf16: the scale is that rounded value.
        scale = tl.math.div_rn(tl.max(tl.max(tl.abs(x), axis=1), axis=0), _MAX).to(tl.bfloat16).to(tl.float32)
        if (scale > 0.0) & (scale < _FLT_MIN):  # a subnormal scale, whose 1 / scale would overflow: divide
            x = tl.math.div_rn(x, scale)
        else:  # x / scale as x times 1 / scale: one multiply; a row of zeros (scale 0) gives zeros
            x = x * tl.where(scale > 0.0, tl.math.div_rn(1.0, scale), 0.0)
        tl.store(q_ptr + row * (KA + KB) + col, tl.clamp(x, -_MAX, _MAX).to(tl.float8e4nv), mask=in_a | in_b)
        tl.store(s_ptr + row, scale)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as [rows, width] with unit column stride (a view where the layout allows)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def tile(ka: int, kb: int) -> tuple[int, int, int]:
    """(CHUNK, NCHUNK, num_warps) of a row of ka + kb values: CHUNK the largest power of two (at most 1024)
    dividing both widths, so that each of the tile's rows lies in one input and starts aligned (its loads
    are contiguous and vectorise); NCHUNK the power of two of chunks that covers the row; a warp for about
    1,536 values (a power of two, at most 16), the best of 8 / 16 / 32 warps on an H100 at FLUX's two widths
    (docs/gpu/2026-12-07-issue25-fast-quant/: 8 for 12,288, 16 for 15,360)."""
    chunk = min(1024, (ka & -ka) if ka else 1024, kb & -kb)
    nchunk = 1 << max(0, math.ceil((ka + kb) / chunk) - 1).bit_length()
    return chunk, nchunk, min(16, 1 << max(0, math.ceil((ka + kb) / 1536) - 1).bit_length())


def launch(a: torch.Tensor | None, b: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel, on CUDA tensors."""
    b2 = _rows(b)
    a2 = _rows(a) if a is not None else None
    ka, kb = (a2.shape[1] if a2 is not None else 0), b2.shape[1]
    rows = b2.shape[0]
    q = torch.empty(rows, ka + kb, device=b.device, dtype=FP8)
    scale = torch.empty(rows, 1, device=b.device, dtype=torch.float32)
    chunk, nchunk, warps = tile(ka, kb)
    if rows:
        with torch.cuda.device(b.device):  # Triton launches on the current device; the tensors may be elsewhere
            _rows_kernel[(rows,)](a2 if a2 is not None else b2, b2, q, scale,
                                  a2.stride(0) if a2 is not None else 0, b2.stride(0),
                                  KA=ka, KB=kb, CHUNK=chunk, NCHUNK=nchunk, GELU=gelu, num_warps=warps)
    return q, scale


@torch.library.custom_op("flux_api::quantize_rows_fp8", mutates_args=())
def _quantize_rows_op(a: torch.Tensor | None, b: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if b.is_cuda and HAS_TRITON:
        return launch(a, b, gelu)
    return reference(a, b, gelu)


@_quantize_rows_op.register_fake
def _(a, b, gelu):
    rows = math.prod(b.shape[:-1])
    width = b.shape[-1] + (a.shape[-1] if a is not None else 0)
    return b.new_empty(rows, width, dtype=FP8), b.new_empty(rows, 1, dtype=torch.float32)


def quantize_rows(a: torch.Tensor | None, b: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) of cat([a, gelu(b) if gelu else b]) per row; one op for torch.compile (opaque to
    inductor, which keeps it whole and captures it in the CUDA graph like any kernel)."""
    return _quantize_rows_op(a, b, gelu)
