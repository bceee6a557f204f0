"""q, k and v stacked into one projection (engine/qkv.py, the `fuse_qkv` setting), on the CPU: the fused
blocks are diffusers' blocks bit for bit (bf16/fp32 weights and torchao fp8 per-row ones), and a LoRA on the
q/k/v layers goes into the fused layer's slot and draws what it draws unfused, through a real service."""

import copy

import numpy as np
import pytest
import torch
from conftest import BF16_DEFAULTS, InProcess, gen, pixels

from flux_api.app import create_app
from flux_api.engine.lora_slot import LoraSlot, convert
from flux_api.engine.qkv import fuse_qkv, part_of
from flux_api.settings import BF16Settings

DIM, HEADS, HEAD_DIM, IMG, TXT = 128, 2, 64, 24, 8


def _blocks(dtype=torch.float32):
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    torch.manual_seed(0)
    return torch.nn.ModuleList([FluxTransformerBlock(DIM, HEADS, HEAD_DIM),
                                FluxSingleTransformerBlock(DIM, HEADS, HEAD_DIM)]).to(dtype).eval()


def _run(blocks, dtype=torch.float32, img=IMG, device="cpu"):
    """The blocks' outputs (each block run on the same inputs: img image tokens, TXT text tokens) in a list."""
    g = torch.Generator(device).manual_seed(1)
    freqs = torch.randn(img + TXT, HEAD_DIM, generator=g, device=device)
    kw = dict(hidden_states=torch.randn(1, img, DIM, generator=g, device=device).to(dtype),
              encoder_hidden_states=torch.randn(1, TXT, DIM, generator=g, device=device).to(dtype),
              temb=torch.randn(1, DIM, generator=g, device=device).to(dtype), image_rotary_emb=(freqs.cos(), freqs.sin()))
    with torch.no_grad():
        return [t for block in blocks for t in block(**kw)]


def test_part_of_names_the_fused_layer_and_the_place():
    assert part_of("transformer_blocks.3.attn.to_k") == ("transformer_blocks.3.attn.to_qkv", 1)
    assert part_of("transformer_blocks.3.attn.add_v_proj") == ("transformer_blocks.3.attn.to_added_qkv", 2)
    assert part_of("transformer_blocks.3.attn.to_out.0") is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_blocks_are_diffusers_blocks_bit_for_bit(dtype):
    blocks = _blocks(dtype)
    plain = copy.deepcopy(blocks)
    assert fuse_qkv(blocks) == 2  # the double block's attention (both streams) and the single block's
    names = {n.rpartition(".")[2] for n, _ in blocks.named_modules()}
    assert {"to_qkv", "to_added_qkv"} <= names and not names & {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}
    assert sum(p.numel() for p in blocks.parameters()) == sum(p.numel() for p in plain.parameters())  # nothing twice
    for got, want in zip(_run(blocks, dtype), _run(plain, dtype)):
        assert torch.equal(got, want)
    assert fuse_qkv(blocks) == 0  # once only


def test_fp8_per_row_weights_stack_exactly(fp8_on_cpu):
    blocks = _blocks(torch.bfloat16)
    fp8_on_cpu(blocks)
    plain = copy.deepcopy(blocks)
    assert fuse_qkv(blocks) == 2
    from torchao.quantization import Float8Tensor

    assert isinstance(blocks[0].attn.to_qkv.weight, Float8Tensor)
    for got, want in zip(_run(blocks, torch.bfloat16), _run(plain, torch.bfloat16)):
        assert torch.equal(got, want)


def _lora_state(g, ranks: dict[str, int]) -> dict:
    state = {}
    for module, r in ranks.items():
        state[f"transformer.{module}.lora_A.weight"] = torch.randn(r, DIM, generator=g) * 0.1
        state[f"transformer.{module}.lora_B.weight"] = torch.randn(DIM if "ff" not in module else 4 * DIM, r, generator=g) * 0.1
    return state


def test_a_lora_on_q_k_v_goes_into_the_fused_layers_slot_and_computes_the_same():
    from diffusers import FluxPipeline

    blocks = _blocks()
    plain = copy.deepcopy(blocks)
    fuse_qkv(blocks)
    fused_slot, plain_slot = LoraSlot(blocks, 8, torch.float32), LoraSlot(plain, 8, torch.float32)
    assert fused_slot.layers["0.attn.to_qkv"].lora_A.shape == (24, DIM)  # three layers' ranks
    assert fused_slot.layers["0.attn.to_out.0"].lora_A.shape == (8, DIM)
    # Different ranks and scales per layer, q and v only in the single block, the text stream's too
    ranks = {"0.attn.to_q": 4, "0.attn.to_k": 2, "0.attn.to_v": 4, "0.attn.add_q_proj": 4, "0.attn.add_k_proj": 4,
             "0.attn.add_v_proj": 1, "0.attn.to_out.0": 4, "1.attn.to_q": 8, "1.attn.to_v": 2}
    state = _lora_state(torch.Generator().manual_seed(5), ranks)
    for i, (module, r) in enumerate(ranks.items()):  # a scale of its own per layer: (i + 1) / 2
        state[f"transformer.{module}.alpha"] = torch.tensor((i + 1) * r / 2)
    loras = []
    for slot in (fused_slot, plain_slot):
        prepared = convert(FluxPipeline, dict(state), "qkv", 8, slot.layers)
        assert prepared.rank == 8  # the LoRA's own rank, not the stacked 12 of a fused layer
        loras.append(prepared)
    assert set(loras[0].layers) == {"0.attn.to_qkv", "0.attn.to_added_qkv", "0.attn.to_out.0", "1.attn.to_qkv"}
    base = _run(blocks)
    for slot, prepared in zip((fused_slot, plain_slot), loras):
        slot.fill([("qkv", prepared, 0.7)])
        assert slot.needs == "attention"  # the fused layers are attention layers: the cheaper variant
        slot.enable(True)
    with_lora = _run(blocks)
    for got, want, before in zip(with_lora, _run(plain), base):
        assert not torch.equal(got, before)  # the LoRA changed something
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # what it changes unfused
    fused_slot.enable(False)
    for got, want in zip(_run(blocks), base):
        assert torch.equal(got, want)  # switched off: the base blocks, bit for bit


def test_what_a_fused_layer_cannot_take_is_refused_by_the_loras_name():
    from diffusers import FluxPipeline

    from flux_api.errors import InvalidLora

    blocks = _blocks()
    fuse_qkv(blocks)
    slot = LoraSlot(blocks, 8, torch.float32)
    g = torch.Generator().manual_seed(8)
    bad = _lora_state(g, {"0.attn.to_q": 4, "0.attn.to_k": 4})
    bad["transformer.0.attn.to_k.lora_B.weight"] = torch.randn(DIM + 1, 4, generator=g)  # made for another model
    with pytest.raises(InvalidLora, match=r"LoRA 'bad' does not fit this model: 0.attn.to_k has out_features 128"):
        convert(FluxPipeline, bad, "bad", 8, slot.layers)
    both = _lora_state(g, {"0.attn.to_q": 4})
    both["transformer.0.attn.to_qkv.lora_A.weight"] = torch.randn(4, DIM, generator=g)
    both["transformer.0.attn.to_qkv.lora_B.weight"] = torch.randn(3 * DIM, 4, generator=g)
    with pytest.raises(InvalidLora, match=r"LoRA 'both' has both 0.attn.to_qkv and its q/k/v parts"):
        convert(FluxPipeline, both, "both", 8, slot.layers)


def test_an_attention_whose_layers_cannot_all_be_stacked_is_left_as_it_is():
    blocks = _blocks()
    blocks[0].attn.add_v_proj = torch.nn.Sequential(blocks[0].attn.add_v_proj)  # not a plain Linear
    plain = copy.deepcopy(blocks)
    assert fuse_qkv(blocks) == 1  # the single block's only
    assert hasattr(blocks[0].attn, "to_q") and not getattr(blocks[0].attn, "fused_projections", False)
    for got, want in zip(_run(blocks), _run(plain)):
        assert torch.equal(got, want)


@pytest.mark.slow
def test_fused_blocks_with_the_slot_compile_whole_with_it_off_and_on():
    from diffusers import FluxPipeline

    blocks = _blocks()
    fuse_qkv(blocks)
    slot = LoraSlot(blocks, 4, torch.float32)
    state = _lora_state(torch.Generator().manual_seed(6), {"0.attn.to_k": 4, "1.attn.to_v": 4})
    slot.fill([("l", convert(FluxPipeline, state, "l", 4, slot.layers), 1.0)])
    eager = {on: (slot.enable(on), _run(blocks))[1] for on in (False, True)}
    for block in blocks:  # as speed.compile_blocks compiles them
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=True)
    for on in (False, True):
        slot.enable(on)
        for got, want in zip(_run(blocks), eager[on]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not all(torch.equal(a, b) for a, b in zip(eager[True], eager[False]))


@pytest.mark.slow
def test_a_service_with_fused_qkv_draws_the_same_and_its_loras_too(bf16, cache_dir, lora_dir):
    settings = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, fuse_qkv=True, **BF16_DEFAULTS)
    with InProcess(create_app(settings)) as fused:
        fused.wait_ready()
        assert fused.client.get("/model-status").json()["compile"]["qkv_fused"] > 0
        assert pixels(gen(fused)) == pixels(gen(bf16))  # the base image: the same bytes
        for loras in ([{"name": "style"}], [{"name": "green"}], [{"name": "kohya"}],
                      [{"name": "style", "weight": 0.5}, {"name": "detail"}]):
            got, want = gen(fused, loras=loras), gen(bf16, loras=loras)
            assert got.status_code == want.status_code == 200, got.text
            diff = np.abs(np.frombuffer(pixels(got), np.uint8).astype(int) - np.frombuffer(pixels(want), np.uint8))
            assert diff.max() <= 2, (loras, diff.max())  # the same LoRA: at most rounding apart
        assert pixels(gen(fused)) == pixels(gen(bf16))  # and no LoRA left behind
