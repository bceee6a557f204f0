"""torchao: fp8 dynamic activations and weights (the fast path on sm_89+), and int8 weight-only (runs
anywhere, so CI loads a really quantized model on the CPU)."""

from __future__ import annotations

from .base import Backend, Requirements

_TORCHAO = {"package": "torchao", "install": "torchao>=0.12"}


class TorchaoFp8Backend(Backend):
    name = "torchao-fp8"
    size_factor = 0.52
    # fp8 runs its activation quantization as separate kernels unless compiled: 434 ms a step at 1024
    # eager against 110 ms compiled (H100, docs/PERFORMANCE.md).
    auto_compile = "regional"
    runs_on = Requirements(gpu="fp8 tensor cores (sm_89+: Ada, Hopper, Blackwell)", min_capability=(8, 9),
                           otherwise="choose bnb-fp4 on older GPUs or torchao-int8 on the CPU", **_TORCHAO)
    chosen_text = "{sm} has fp8 tensor cores"
    precision_text = "torchao fp8 (e4m3) dynamic activations and weights, per-row scales"

    def transformer_quantization(self, dtype):
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        # set_inductor_config=False: torchao otherwise switches on inductor's coordinate-descent
        # tuning, which took the first fp8 compile past four minutes (H100); without it, 30 s.
        return TorchAoConfig(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))

    def fuse(self, transformer) -> str | None:
        from ..fp8_fused import install
        from ..fp8_rows import HAS_TRITON

        if not HAS_TRITON:
            return None
        fused = install(transformer)
        return f"{fused} layers take their fp8 input from one Triton kernel (GELU, concatenation, per-row scale)" if fused else None


class TorchaoInt8Backend(Backend):
    name = "torchao-int8"
    size_factor = 0.52
    runs_on = Requirements(**_TORCHAO)  # the CPU included
    precision_text = "torchao int8 weight-only, per-row scales, {dtype} compute"
    chosen_text = "int8 weight-only runs anywhere, the CPU included"

    def transformer_quantization(self, dtype):
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig(set_inductor_config=False))
