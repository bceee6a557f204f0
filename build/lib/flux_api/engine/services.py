"""The two services' managers. Each says which backends it offers, in what order `auto` tries them, and
its memory_mode=low defaults; everything else is the base FluxModelManager's.
"""

from __future__ import annotations

from .manager import FluxModelManager


class BF16FluxModelManager(FluxModelManager):
    """Stock diffusers at full precision: bf16 on CUDA, float32 on the CPU (CPU bf16 matmuls are slow).
    memory_mode=low keeps the text encoders on the CPU."""

    offered_backends = ("diffusers",)
    auto_order = ("diffusers",)
    low_memory_text = "cpu"


class FP4FluxModelManager(FluxModelManager):
    """A quantized transformer. auto: the FP4 service's promise is "faster and lighter than BF16", so
    Nunchaku where it runs, then fp8 on sm_89+, then 4-bit bitsandbytes, then int8 (the CPU too).
    memory_mode=low prefers 4-bit (fp8's 11 GiB transformer does not fit a 12 GiB budget) and keeps
    T5 in nf4 on the GPU."""

    offered_backends = ("nunchaku", "bnb-fp4", "bnb-nf4", "torchao-fp8", "torchao-int8")
    auto_order = ("nunchaku", "torchao-fp8", "bnb-fp4", "torchao-int8")
    low_memory_order = ("nunchaku", "bnb-fp4", "torchao-fp8", "torchao-int8")
    low_memory_note = "memory_mode=low: a 4-bit transformer (fp8 takes 11 GiB)"
    low_memory_text = "nf4"


MANAGERS: dict[str, type[FluxModelManager]] = {"bf16": BF16FluxModelManager, "fp4": FP4FluxModelManager}
