"""The BF16 blocks with the GELU in the GEMM's epilogue and a single block's proj_out in two GEMMs
(engine/bf16_fused.py). On the CPU aten's `_addmm_activation` GELU is the exact one, where CUDA's is the tanh
one FLUX uses: the block tests replace it with CUDA's arithmetic (addmm, then tanh GELU; a fake, named so).
What they check is the wiring: the same blocks' outputs within bf16 rounding, a LoRA slot switched on running
diffusers' code bit for bit, and the fused blocks compiling whole. The CUDA test runs the real epilogue."""

import copy

import pytest
import torch

from flux_api.engine import bf16_fused
from flux_api.engine.bf16_fused import install
from flux_api.engine.lora_slot import LoraSlot

DIM, HEADS, HEAD_DIM, IMG, TXT = 128, 2, 64, 24, 8


def _blocks(dtype=torch.bfloat16, device="cpu"):
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    torch.manual_seed(0)
    return torch.nn.ModuleList([FluxTransformerBlock(DIM, HEADS, HEAD_DIM),
                                FluxSingleTransformerBlock(DIM, HEADS, HEAD_DIM)]).to(device, dtype).eval()


def _run(blocks, dtype=torch.bfloat16, device="cpu"):
    g = torch.Generator().manual_seed(1)
    freqs = torch.randn(IMG + TXT, HEAD_DIM, generator=g)
    kw = dict(hidden_states=torch.randn(1, IMG, DIM, generator=g).to(device, dtype),
              encoder_hidden_states=torch.randn(1, TXT, DIM, generator=g).to(device, dtype),
              temb=torch.randn(1, DIM, generator=g).to(device, dtype),
              image_rotary_emb=(freqs.cos().to(device), freqs.sin().to(device)))
    with torch.no_grad():
        return [t.float() for block in blocks for t in block(**kw)]


@pytest.fixture
def cuda_gelu(monkeypatch):
    """torch._addmm_activation with CUDA's arithmetic (the tanh GELU on the fp32 product, rounded once) on
    the CPU, whose own uses the exact GELU: a fake of the CUDA kernel."""
    def addmm_gelu(bias, a, b):
        y = torch.addmm(bias.float(), a.float(), b.float())
        return torch.nn.functional.gelu(y, approximate="tanh").to(a.dtype)

    monkeypatch.setattr(bf16_fused, "addmm_gelu", addmm_gelu)


def test_the_fused_blocks_compute_diffusers_blocks_within_bf16_rounding(cuda_gelu):
    blocks = _blocks()
    plain = copy.deepcopy(blocks)
    assert install(blocks) == 3  # the double block's two feed-forwards and the single block
    for got, want in zip(_run(blocks), _run(plain)):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)  # a bf16 rounding or two apart
    assert install(_blocks(torch.float32)) == 0  # float32 weights (the CPU's dtype): diffusers' code


def test_a_lora_slot_switched_on_runs_diffusers_code_bit_for_bit(cuda_gelu):
    blocks = _blocks()
    plain = copy.deepcopy(blocks)
    slots = [LoraSlot(b, 4, torch.bfloat16) for b in (blocks, plain)]
    assert install(blocks) == 3  # the slot's wrappers are seen through
    g = torch.Generator().manual_seed(2)
    values = {name: (torch.randn(layer.lora_A.shape, generator=g) * 0.1, torch.randn(layer.lora_B.shape, generator=g) * 0.1)
              for name, layer in slots[0].layers.items()}
    for slot in slots:
        for name, layer in slot.layers.items():
            layer.lora_A.data.copy_(values[name][0])
            layer.lora_B.data.copy_(values[name][1])
        slot.enable(True)
    for got, want in zip(_run(blocks), _run(plain)):
        assert torch.equal(got, want)
    for slot in slots:
        slot.enable(False)
    off = _run(blocks)
    for got, want in zip(off, _run(plain)):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)


@pytest.mark.slow
def test_the_fused_blocks_compile_whole():
    blocks = _blocks()
    install(blocks)
    eager = _run(blocks)  # the CPU's own _addmm_activation, compiled as an extern call like on CUDA
    for block in blocks:  # as speed.compile_blocks compiles them
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=True)
    for got, want in zip(_run(blocks), eager):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GELU epilogue is CUDA's (cuBLASLt)")
def test_the_cuda_epilogue_is_diffusers_gelu_but_for_rounding():
    blocks = _blocks(device="cuda")
    plain = copy.deepcopy(blocks)
    install(blocks)
    for got, want in zip(_run(blocks, device="cuda"), _run(plain, device="cuda")):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)
