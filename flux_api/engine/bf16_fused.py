"""The BF16 service's blocks with their GELU in the GEMM's epilogue and no concatenation (issue 25).

FLUX's widest activations are the 12,288-wide MLP inputs. Compiled, a block computes them in three passes
over memory: the GEMM writes the pre-activation, inductor's kernel reads it and writes gelu(x) (in a
single block, into the concatenation [attention, gelu(mlp)] that `proj_out` reads), and the next GEMM
reads it. At 1024 px a pass over 4,608 x 12,288 bf16 values is 113 MB; one a block is about 4-5 ms of a
139 ms BF16 step (an H100's 3.35 TB/s, read and written).

- aten's `_addmm_activation(bias, x, W^T, use_gelu=True)` computes the layer and its tanh GELU in one GEMM
  (cuBLASLt's GELU_BIAS epilogue on CUDA; ATen applies tanh GELU after the GEMM where the Lt path does not
  apply). inductor keeps it as one extern call (it has no decomposition for it in inductor's table). FLUX's
  GELU is the tanh one, so the arithmetic is the same but for one rounding: the epilogue applies GELU to
  the fp32 accumulator, where diffusers rounds to bf16 first.
- A single block's `proj_out(cat([attention, mlp]))` is two GEMMs into one output: attention x W[:, :3072]^T
  + bias, then += mlp x W[:, 3072:]^T (cuBLAS with beta = 1, the weight's column views as they are, no
  copy): the 141 MB concatenation is never written. The first product is rounded to bf16 before the second
  adds to it.

`install(transformer)` swaps the forward of each single block and each feed-forward (instances only), where
the layers are plain bf16/fp16 Linears (or the LoRA slot's wrapper of one) with biases and the GELU is the
tanh one. A layer of the LoRA slot switched on runs diffusers' code (its branch adds to the pre-activation
and reads the concatenation), so a LoRA costs what it cost; switched off, the fused code runs. CUDA only:
on the CPU `_addmm_activation`'s GELU is the exact (erf) one.
"""

from __future__ import annotations

import torch

from . import fused_blocks
from .fused_blocks import single_block_forward


def _plain(layer) -> bool:
    """Whether the Linear under `layer` (itself, or the LoRA slot's base) is a bf16/fp16 one with a bias."""
    base = getattr(layer, "base", layer)
    return (type(base) is torch.nn.Linear and base.bias is not None and type(base.weight) is torch.nn.Parameter
            and base.weight.dtype in (torch.bfloat16, torch.float16))


def addmm_gelu(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """gelu(a @ b + bias) in one GEMM: aten's op (dynamo traces `torch.ops`, not `torch._addmm_activation`)."""
    return torch.ops.aten._addmm_activation.default(bias, a, b, use_gelu=True)


def gelu_linear(layer, x: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(layer(x)) in one GEMM (the slot's layer switched on: its own forward, then the GELU)."""
    if getattr(layer, "enabled", False):
        return torch.nn.functional.gelu(layer(x), approximate="tanh")
    base = getattr(layer, "base", layer)
    y = addmm_gelu(base.bias, x.reshape(-1, x.shape[-1]), base.weight.t())
    return y.reshape(*x.shape[:-1], y.shape[-1])


def split_linear(layer, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """layer(cat([a, b], -1)) as two GEMMs into one output, the concatenation never made."""
    if getattr(layer, "enabled", False):
        return layer(torch.cat([a, b], dim=-1))
    base = getattr(layer, "base", layer)
    width = a.shape[-1]
    out = torch.addmm(base.bias, a.reshape(-1, width), base.weight[:, :width].t())
    out.addmm_(b.reshape(-1, b.shape[-1]), base.weight[:, width:].t())  # in place: C read by the GEMM (beta 1)
    return out.reshape(*a.shape[:-1], out.shape[-1])


_single_block_forward = single_block_forward(lambda block, x: gelu_linear(block.proj_mlp, x),
                                             lambda block, a, b: split_linear(block.proj_out, a, b))


def _feed_forward(self, hidden_states, *args, **kwargs):
    """diffusers' FeedForward (GELU tanh, dropout off, Linear), the GELU in the first GEMM."""
    return self.net[2](gelu_linear(self.net[0].proj, hidden_states))


def install(transformer) -> int:
    """Fuse where it applies (see the module's docstring); the number of modules fused. Before compiling."""
    return fused_blocks.install(
        transformer,
        (lambda block: _plain(block.proj_mlp) and _plain(block.proj_out), _single_block_forward),
        (lambda ff: _plain(ff.net[0].proj), _feed_forward))
