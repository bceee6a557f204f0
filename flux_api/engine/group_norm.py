"""The VAE's GroupNorm with its statistics read by many programs at once, not one per group.

ATen's CUDA GroupNorm computes each (image, group)'s mean and variance in one thread block
(`RowwiseMomentsCUDAKernel`). The VAE decoder's 30 GroupNorms have 32 groups: 32 blocks on a 132-SM H100
read up to 536 MB each. In the 2026-12-06 H100 trace of the FP4 service (docs/gpu/2026-12-06-issue25/
h100-fp4-trace.json.gz) that is 47.1 ms of the VAE decode's 93.6 ms at 1024 px, 3.4 ms for one norm of
1024 x 1024 x 128 bf16 values (268 MB; about 0.1 ms at the GPU's bandwidth): 1.7% of an FP4 request.

Here `_partial_moments` (Triton) splits each group's values into chunks, one program each, and sums d and
d^2 in fp32, d = x minus the group's first value (shifted: the variance keeps its precision where the mean is
large against the spread); torch adds the chunks' sums, and the normalization with the affine is one addcmul per element
in fp32, rounded once to the input's dtype. The arithmetic follows ATen's: the mean and 1/std are kept in
the input's dtype (ATen stores them so), then a = rstd * weight and b = bias - a * mean per channel in fp32,
y = x * a + b. The variance is E[d^2] - E[d]^2 in fp32 (ATen: Welford's, also fp32): the last bits may
differ. Elsewhere (the CPU, a GPU without Triton, fp32 or non-contiguous input) F.group_norm as it is.
"""

from __future__ import annotations

import types

import torch

from .fp8_rows import HAS_TRITON

BLOCK = 1024  # values a program reads per loop step: 8 bf16 (16 bytes) per thread at 4 warps
PROGRAMS = 4096  # programs per call, about 30 per SM on an H100: enough to keep its memory busy


def normalize(x: torch.Tensor, sums: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """GroupNorm of `x` [N, C, ...] from each group's fp32 (pivot, sum, sum of squares) of x - pivot, `sums`
    [N * groups, 3]: shifted by a value of the group, E[d^2] - E[d]^2 keeps its precision where the mean is
    large against the spread (unshifted, mean 64 and std 0.25 would lose about 1% of the variance)."""
    n, channels = x.shape[0], x.shape[1]
    count = x[0, : channels // groups].numel()
    mean_d = sums[:, 1] / count  # the mean of x - pivot
    mean = sums[:, 0] + mean_d
    var = (sums[:, 2] / count - mean_d * mean_d).clamp_min(0)
    # As ATen keeps them: in the input's dtype, used in fp32
    mean = mean.to(x.dtype).float().view(n, groups, 1)
    rstd = torch.rsqrt(var + eps).to(x.dtype).float().view(n, groups, 1)
    a = rstd.expand(n, groups, channels // groups).reshape(n, channels)
    if weight is not None:
        a = a * weight.float()
    b = -a * mean.expand(n, groups, channels // groups).reshape(n, channels)
    if bias is not None:
        b = b + bias.float()
    shape = (n, channels) + (1,) * (x.dim() - 2)
    return torch.addcmul(b.view(shape), x, a.view(shape), out=torch.empty_like(x))  # fp32 math, one rounding


def reference_sums(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Each group's (pivot, sum, sum of squares) of x - pivot in fp32, the pivot its first value: in torch, what
    the kernel computes."""
    rows = x.reshape(x.shape[0] * groups, -1).float()
    pivot = rows[:, :1]
    d = rows - pivot
    return torch.stack([pivot[:, 0], d.sum(-1), (d * d).sum(-1)], dim=-1)


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _partial_moments(x_ptr, out_ptr, n, chunks, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        part = tl.program_id(1)
        start = part * CHUNK
        end = tl.minimum(start + CHUNK, n)
        base = x_ptr + row.to(tl.int64) * n
        pivot = tl.load(base).to(tl.float32)  # the group's first value: every chunk shifts by the same one
        s = tl.zeros([BLOCK], dtype=tl.float32)
        s2 = tl.zeros([BLOCK], dtype=tl.float32)
        for offset in range(0, CHUNK, BLOCK):  # CHUNK is a multiple of BLOCK; the last chunk's tail is masked
            index = start + offset + tl.arange(0, BLOCK)
            inside = index < end
            d = tl.where(inside, tl.load(base + index, mask=inside, other=0.0).to(tl.float32) - pivot, 0.0)
            s += d
            s2 += d * d
        out = out_ptr + (row * chunks + part) * 2
        tl.store(out, tl.sum(s, axis=0))
        tl.store(out + 1, tl.sum(s2, axis=0))


def group_sums(x: torch.Tensor, groups: int) -> torch.Tensor:
    """`reference_sums` by the Triton kernel: [N * groups, 3] fp32."""
    rows = x.shape[0] * groups
    n = x.numel() // rows
    chunks = max(1, min(PROGRAMS // rows, triton.cdiv(n, 8 * BLOCK)))
    # A power of two: a compile-time loop bound (one kernel per chunk size, a handful for the VAE's sizes)
    chunk = max(BLOCK, triton.next_power_of_2(triton.cdiv(n, chunks)))
    chunks = triton.cdiv(n, chunk)
    parts = torch.empty(rows, chunks, 2, device=x.device, dtype=torch.float32)
    with torch.cuda.device(x.device):
        _partial_moments[(rows, chunks)](x, parts, n, chunks, CHUNK=chunk, BLOCK=BLOCK, num_warps=4)
    pivots = x.reshape(rows, n)[:, 0].float()
    return torch.cat([pivots[:, None], parts.sum(1)], dim=1)


def group_norm(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    if not (HAS_TRITON and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.is_contiguous()
            and x.dim() >= 3 and x.shape[1] % groups == 0):
        return torch.nn.functional.group_norm(x, groups, weight, bias, eps)
    return normalize(x, group_sums(x, groups), groups, weight, bias, eps)


def _forward(self, x):
    return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def install(module) -> int:
    """Every GroupNorm under `module` (all the VAE's: FLUX.1's decoder has 30, its encoder, for image-to-image,
    22) computed by `group_norm` (instances only); how many."""
    norms = [m for m in module.modules() if type(m) is torch.nn.GroupNorm]
    for m in norms:
        m.forward = types.MethodType(_forward, m)
    return len(norms)
