"""The plain diffusers transformer in the pipeline's dtype (bf16 on CUDA, float32 on the CPU): the
BF16 service's only backend."""

from __future__ import annotations

from .base import Backend


class DiffusersBackend(Backend):
    name = "diffusers"

    @classmethod
    def chosen_because(cls, hw) -> str:
        return "full precision, stock diffusers"
