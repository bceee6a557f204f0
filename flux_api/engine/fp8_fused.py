"""The FP4 service's fp8 blocks with their two widest activation quantizations fused (issue 25).

torchao's fp8 Linear (PerRow) quantizes its input per row: amax, scale, cast. Compiled, inductor fuses
that with what made the input, but for the two widest inputs of FLUX's blocks it makes two kernels that
read each row twice, at about a third of the GPU's bandwidth (the H100 profile of 2026-12-06,
docs/gpu/2026-12-06-issue25/h100-fp4-trace.json.gz: 12.1 ms of a 103 ms step for a single block's
`proj_out`, whose input is cat([attention, gelu(mlp)]), 15,360 wide; 4 ms for a double block's
`ff.net.2`, whose input is gelu(ff.net.0), 12,288 wide). Here those two layers take their input from one
Triton kernel that reads each row once (`fp8_rows.quantize_rows`: the GELU and the concatenation applied
on the way), then run torchao's own GEMM call (`torch._scaled_mm` on the layer's fp8 weight and scales,
as torchao's Float8Tensor calls it). torchao's arithmetic but for a fast tanh and a reciprocal (fp8_rows);
measured on an H100 (2026-12-07): a step 107 -> 97.7 ms, the image 47 dB from the unfused one.

`install(transformer)` swaps the forward of each single block and of each double block's two feed-forwards
(instances only; diffusers' classes are untouched), where the layer's weight is a torchao Float8Tensor with
per-row scales and the model's GELU is the tanh one; anything else keeps diffusers' forward. A layer of
the LoRA slot (lora_slot.SlotLinear) switched on runs as it did unfused (its branch needs the bf16 input),
so a LoRA costs what it cost; switched off, the fused kernel runs.
"""

from __future__ import annotations

import torch

from . import fused_blocks
from .fp8_rows import quantize_rows
from .fused_blocks import single_block_forward


def _fp8_weight(layer):
    """The torchao Float8Tensor under `layer` (a Linear, or the slot's wrapper of one) where torchao itself
    would run exactly what fused_linear runs: bf16, e4m3 weights with per-row scales, dynamic per-row
    activations along the last dim with no value bounds, torch's kernels (not mslk's) and no padding or
    emulation. None elsewhere: that layer keeps torchao's own code."""
    base = getattr(layer, "base", layer)
    weight = getattr(base, "weight", None)
    try:
        from torchao.quantization import Float8Tensor, PerRow
        from torchao.quantization.quantize_.common import KernelPreference
        from torchao.utils import _is_mslk_available
    except ImportError:  # another torchao: its code may differ, so nothing is fused
        return None
    if not isinstance(weight, Float8Tensor) or weight.qdata.dtype != torch.float8_e4m3fn or weight.dtype != torch.bfloat16:
        return None
    act, mm = weight.act_quant_kwargs, weight.mm_config
    preferences = {weight.kernel_preference, act.kernel_preference if act is not None else None}
    torch_kernels = preferences <= {KernelPreference.TORCH} or (
        preferences <= {KernelPreference.TORCH, KernelPreference.AUTO} and not _is_mslk_available())
    if (act is None or not isinstance(act.granularity, PerRow) or act.granularity.dim not in (-1, 1)
            or act.float8_dtype != torch.float8_e4m3fn or act.hp_value_lb is not None or act.hp_value_ub is not None
            or list(weight.block_size) != [1, weight.shape[1]] or not torch_kernels
            or mm is None or mm.pad_inner_dim or mm.emulate):
        return None
    return weight


def fused_linear(layer, a: torch.Tensor | None, b: torch.Tensor, gelu: bool) -> torch.Tensor:
    """layer(cat([a, gelu(b)])) for a torchao fp8 layer, its input quantized by one kernel."""
    if getattr(layer, "enabled", False):
        # The LoRA slot's branch reads the bf16 input: the layer as it was, which inductor fuses as before
        # (computing that input besides the kernel cost 9% on an H200 with the slot on everywhere).
        x = torch.nn.functional.gelu(b, approximate="tanh") if gelu else b
        return layer(torch.cat([a, x], dim=-1) if a is not None else x)
    base = getattr(layer, "base", layer)
    weight = base.weight
    q, scale = quantize_rows(a, b, gelu)
    y = torch._scaled_mm(q, weight.qdata.t(), scale_a=scale, scale_b=weight.scale.t(), bias=base.bias,
                         out_dtype=b.dtype, use_fast_accum=weight.mm_config.use_fast_accum)
    return y.reshape(*b.shape[:-1], y.shape[-1])


# The MLP's input layer as it is (its GELU is applied in the fused quantization), proj_out fused.
_single_block_forward = single_block_forward(lambda block, x: block.proj_mlp(x),
                                             lambda block, a, b: fused_linear(block.proj_out, a, b, True))


def _feed_forward(self, hidden_states, *args, **kwargs):
    """diffusers' FeedForward (GELU tanh, dropout off, Linear), with the second Linear's input fused."""
    return fused_linear(self.net[2], None, self.net[0].proj(hidden_states), True)


def install(transformer) -> int:
    """Fuse where it applies (see the module's docstring); the number of layers fused. Before compiling."""
    return fused_blocks.install(transformer, (lambda block: _fp8_weight(block.proj_out) is not None, _single_block_forward),
                                (lambda ff: _fp8_weight(ff.net[2]) is not None, _feed_forward))
