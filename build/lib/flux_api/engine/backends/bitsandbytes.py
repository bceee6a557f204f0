"""bitsandbytes 4-bit weights with bf16 compute (diffusers' BitsAndBytesConfig), on any CUDA GPU."""

from __future__ import annotations

from .base import Backend, Requirements


class _BitsAndBytes4Bit(Backend):
    quant_type: str
    runs_on = Requirements(gpu="a CUDA GPU (bitsandbytes)", otherwise="on the CPU choose torchao-int8",
                           package="bitsandbytes", install="bitsandbytes>=0.45")
    precision_text, chosen_text = "bitsandbytes 4-bit {b.quant_type} weights, {dtype} compute", "4-bit weights on CUDA GPU {sm}"
    size_factor = 0.27
    fullgraph = False  # bitsandbytes' 4-bit layers break the graph

    def transformer_quantization(self, dtype):
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type, bnb_4bit_compute_dtype=dtype)


class BnbFp4Backend(_BitsAndBytes4Bit):
    name = "bnb-fp4"
    quant_type = "fp4"


class BnbNf4Backend(_BitsAndBytes4Bit):
    name = "bnb-nf4"
    quant_type = "nf4"
