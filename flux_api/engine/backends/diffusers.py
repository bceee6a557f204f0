"""The plain diffusers transformer in the pipeline's dtype (bf16 on CUDA, float32 on the CPU): the
BF16 service's only backend."""

from __future__ import annotations

from .base import Backend


class DiffusersBackend(Backend):
    name = "diffusers"
    chosen_text = "full precision, stock diffusers"
    # Compiled, with CUDA graphs: 0.8x of stock's time at 1024 px on an H100 (docs/PERFORMANCE.md).
    auto_compile = "regional"

    def fuse(self, transformer) -> str | None:
        from ..bf16_fused import install

        fused = install(transformer)
        return (f"{fused} modules with the GELU in their GEMM's epilogue (single blocks' proj_out in two GEMMs, "
                f"no concatenation)") if fused else None
