"""torchao: fp8 dynamic activations and weights (the fast path on sm_89+), and int8 weight-only (runs
anywhere, so CI loads a really quantized model on the CPU)."""

from __future__ import annotations

from .base import Backend

_NEEDS_TORCHAO = "needs torchao: pip install 'torchao>=0.12'"


class TorchaoFp8Backend(Backend):
    name = "torchao-fp8"
    size_factor = 0.52
    # fp8 runs its activation quantization as separate kernels unless compiled: 434 ms a step at 1024
    # eager against 110 ms compiled (H100, docs/PERFORMANCE.md).
    auto_compile = "regional"

    @classmethod
    def problem(cls, hw, pkgs) -> str | None:
        if not hw.cuda or hw.gpus[0].capability < (8, 9):
            where = f"{hw.gpus[0].name} ({hw.gpus[0].sm})" if hw.cuda else "the CPU"
            return (f"backend torchao-fp8 needs fp8 tensor cores (sm_89+: Ada, Hopper, Blackwell), not {where}; "
                    "choose bnb-fp4 on older GPUs or torchao-int8 on the CPU")
        if not pkgs.torchao:
            return f"backend torchao-fp8 {_NEEDS_TORCHAO}"
        return None

    @classmethod
    def chosen_because(cls, hw) -> str:
        return f"{hw.gpus[0].sm} has fp8 tensor cores"

    def precision(self, dtype: str) -> str:
        return "torchao fp8 (e4m3) dynamic activations and weights, per-row scales"

    def transformer_quantization(self, dtype):
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        # set_inductor_config=False: torchao otherwise switches on inductor's coordinate-descent
        # tuning, which took the first fp8 compile past four minutes (H100); without it, 30 s.
        return TorchAoConfig(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))


class TorchaoInt8Backend(Backend):
    name = "torchao-int8"
    size_factor = 0.52

    @classmethod
    def problem(cls, hw, pkgs) -> str | None:
        return None if pkgs.torchao else f"backend torchao-int8 {_NEEDS_TORCHAO}"

    @classmethod
    def chosen_because(cls, hw) -> str:
        return "int8 weight-only runs anywhere" + ("" if hw.cuda else " (no CUDA GPU in use)")

    def precision(self, dtype: str) -> str:
        return f"torchao int8 weight-only, per-row scales, {dtype} compute"

    def transformer_quantization(self, dtype):
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig(set_inductor_config=False))
