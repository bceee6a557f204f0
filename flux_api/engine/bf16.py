"""BF16FluxModelManager: stock diffusers FluxPipeline at full precision.

bf16 on CUDA; on the CPU (the tiny model) float32, since CPU bf16 matmuls are slow. /model-status
reports the dtype actually in use.
"""

from __future__ import annotations

from .base import FluxModelManager


class BF16FluxModelManager(FluxModelManager):
    backend = "diffusers"
