"""bitsandbytes 4-bit weights with bf16 compute (diffusers' BitsAndBytesConfig), on any CUDA GPU."""

from __future__ import annotations

from .base import Backend


class _BitsAndBytes4Bit(Backend):
    quant_type: str
    size_factor = 0.27
    fullgraph = False  # bitsandbytes' 4-bit layers break the graph

    @classmethod
    def problem(cls, hw, pkgs) -> str | None:
        if not hw.cuda:
            return f"backend {cls.name} needs a CUDA GPU (bitsandbytes); on the CPU choose torchao-int8"
        if not pkgs.bitsandbytes:
            return f"backend {cls.name} needs bitsandbytes: pip install 'bitsandbytes>=0.45'"
        return None

    @classmethod
    def chosen_because(cls, hw) -> str:
        return f"4-bit weights on CUDA GPU {hw.gpus[0].sm}"

    def precision(self, dtype: str) -> str:
        return f"bitsandbytes 4-bit {self.quant_type} weights, {dtype} compute"

    def transformer_quantization(self, dtype):
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type, bnb_4bit_compute_dtype=dtype)


class BnbFp4Backend(_BitsAndBytes4Bit):
    name = "bnb-fp4"
    quant_type = "fp4"


class BnbNf4Backend(_BitsAndBytes4Bit):
    name = "bnb-nf4"
    quant_type = "nf4"
