"""The fused fp8 input quantization (engine/fp8_fused.py, fp8_rows.py) against torchao and diffusers.

The Triton kernel itself runs on a CUDA GPU only (Triton's CPU interpreter emulates fp8 casts wrongly: it
cannot check bytes); its bytes against `fp8_rows.reference` were counted on an H100 (0.012% differ, every
scale equal: its fast tanh; docs/gpu/2026-12-07-issue25-fast-quant/). Here, on the CPU, the op runs the reference, so these tests check
what the GPU path is built from: that the reference is torchao's arithmetic bit for bit, and that the
swapped forwards are diffusers' blocks bit for bit, with the LoRA slot off and on.

torchao refuses to make fp8 weights without an sm_89+ GPU (`_check_hardware_support`); torch's CPU
`_scaled_mm` runs them. conftest's `fp8_on_cpu` switches that check off, and says so: the one fake here.
"""

import copy

import pytest
import torch

from flux_api.engine import fp8_fused, fp8_rows
from flux_api.engine.lora_slot import LoraSlot

DIM, HEADS, HEAD_DIM, IMG, TXT = 128, 2, 64, 24, 8


def _blocks(quantize):
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([FluxTransformerBlock(DIM, HEADS, HEAD_DIM), FluxSingleTransformerBlock(DIM, HEADS, HEAD_DIM)])
    blocks.to(torch.bfloat16).eval()
    quantize(blocks)
    return blocks


def _inputs(seed=1, img=IMG):
    g = torch.Generator().manual_seed(seed)
    freqs = torch.randn(img + TXT, HEAD_DIM, generator=g)
    return dict(hidden_states=torch.randn(1, img, DIM, dtype=torch.bfloat16, generator=g),
                encoder_hidden_states=torch.randn(1, TXT, DIM, dtype=torch.bfloat16, generator=g),
                temb=torch.randn(1, DIM, dtype=torch.bfloat16, generator=g), image_rotary_emb=(freqs.cos(), freqs.sin()))


@pytest.mark.parametrize("with_a", [True, False])
@pytest.mark.parametrize("gelu", [True, False])
def test_the_reference_is_torchaos_per_row_quantization_bit_for_bit(with_a, gelu):
    from torchao.quantization import Float8Tensor, PerRow

    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 9, 96, dtype=torch.bfloat16, generator=g) * 4 if with_a else None
    b = torch.randn(2, 9, 160, dtype=torch.bfloat16, generator=g) * 3
    x = torch.nn.functional.gelu(b, approximate="tanh") if gelu else b
    x = torch.cat([a, x], dim=-1) if with_a else x
    want = Float8Tensor.from_hp(x, granularity=PerRow())
    q, scale = fp8_rows.reference(a, b, gelu)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert torch.equal(q.view(torch.uint8), want.qdata.reshape(-1, x.shape[-1]).view(torch.uint8))
    assert torch.equal(scale, want.scale.reshape(-1, 1))


def test_the_op_gives_the_reference_off_the_gpu_and_its_shapes_under_compile():
    """Off the GPU the op dispatches to the reference (so the bytes here are the reference's own); what this
    checks is that dispatch, and the fake implementation torch.compile traces the op with."""
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(1, 5, 64, dtype=torch.bfloat16, generator=g), torch.randn(1, 5, 256, dtype=torch.bfloat16, generator=g)
    q, s = fp8_rows.quantize_rows(a, b, True)
    rq, rs = fp8_rows.reference(a, b, True)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)
    compiled = torch.compile(lambda a, b: fp8_rows.quantize_rows(a, b, True), fullgraph=True, dynamic=True)
    cq, cs = compiled(a, b)  # the fake (meta) implementation gave the compiled graph these shapes
    assert cq.shape == (5, 320) and cs.shape == (5, 1)
    assert torch.equal(cq.view(torch.uint8), rq.view(torch.uint8))


@pytest.mark.parametrize("lora", [False, True])
def test_fused_blocks_are_diffusers_blocks_bit_for_bit_with_the_lora_slot_off_and_on(fp8_on_cpu, lora):
    blocks = _blocks(fp8_on_cpu)
    slot = LoraSlot(blocks, 8, torch.bfloat16)
    g = torch.Generator().manual_seed(5)
    for layer in slot.layers.values():  # a LoRA on every Linear, the fused ones included
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.1)
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)
    reference = copy.deepcopy(blocks)
    assert fp8_fused.install(blocks) == 3  # the single block, and the double block's ff and ff_context
    assert blocks[1].forward.__func__ is fp8_fused._single_block_forward
    assert blocks[0].ff.forward.__func__ is fp8_fused._feed_forward
    for model in (blocks, reference):
        for m in model.modules():
            if hasattr(m, "lora_A"):
                m.enabled = lora
    kw = _inputs()
    with torch.inference_mode():
        for fused, plain in zip(blocks, reference):
            got, want = fused(**kw), plain(**kw)
            for x, y in zip(got, want):
                assert torch.equal(x, y)
    if lora:  # the branch mattered: without it the fused layers' outputs would differ
        blocks[1].proj_out.enabled = False
        with torch.inference_mode():
            assert not torch.equal(blocks[1](**kw)[1], reference[1](**kw)[1])


@pytest.mark.slow  # about 20 s of inductor compiling on the CPU: in the full suite
def test_fused_blocks_compile_whole_for_every_size(fp8_on_cpu):
    blocks = _blocks(fp8_on_cpu)
    fp8_fused.install(blocks)
    reference = copy.deepcopy(blocks)
    for block in blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=True)  # fullgraph: no break
    with torch.inference_mode():
        for img in (IMG, 40):  # a second size reuses the dynamic graph
            kw = _inputs(img=img)
            for compiled, eager in zip(blocks, reference):
                for x, y in zip(compiled(**kw), eager(**kw)):
                    assert x.shape == y.shape
                    torch.testing.assert_close(x, y, atol=0.1, rtol=0.05)  # inductor's CPU rounding differs a little


def test_only_torchao_fp8_per_row_layers_with_the_tanh_gelu_are_fused(fp8_on_cpu):
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    plain = torch.nn.ModuleList([FluxSingleTransformerBlock(DIM, HEADS, HEAD_DIM)]).to(torch.bfloat16)
    assert fp8_fused.install(plain) == 0  # bf16 weights: the BF16 service's blocks stay diffusers'
    int8 = copy.deepcopy(plain)
    quantize_(int8, Int8WeightOnlyConfig())
    assert fp8_fused.install(int8) == 0
    other_gelu = copy.deepcopy(plain)
    other_gelu[0].act_mlp = torch.nn.GELU()  # the exact GELU: the kernel applies the tanh one only
    fp8_on_cpu(other_gelu)
    assert fp8_fused.install(other_gelu) == 0
    assert "forward" not in vars(other_gelu[0])
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerTensor

    per_tensor = copy.deepcopy(plain)  # torchao's per-tensor scales: another arithmetic, left to torchao
    quantize_(per_tensor, Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor(), set_inductor_config=False))
    assert fp8_fused.install(per_tensor) == 0
    fp8_on_cpu(plain)
    assert fp8_fused.install(plain) == 1  # the same block in bf16 fp8 per-row: fused


@pytest.mark.parametrize("ka, kb, want", [(3072, 12288, (1024, 16, 16)), (0, 12288, (1024, 16, 8)),
                                           (64, 256, (64, 8, 1)), (0, 100, (4, 32, 1)), (96, 160, (32, 8, 1))])
def test_the_kernels_tile_covers_the_row_with_chunks_inside_one_input(ka, kb, want):
    chunk, nchunk, warps = fp8_rows.tile(ka, kb)
    assert (chunk, nchunk, warps) == want  # the warps: the best measured at FLUX's two widths on an H100
    assert ka % chunk == 0 and kb % chunk == 0 and chunk * nchunk >= ka + kb > chunk * nchunk // 2


def test_the_setting_and_the_benchmark_option(cache_dir):
    from flux_api.bench.targets import parse_target
    from flux_api.settings import FP4Settings

    assert FP4Settings(model="tiny", cache_dir=cache_dir).fuse_kernels is True  # faster on an H100 (2026-12-07)
    assert parse_target("fp4+fused") == ("fp4", None, {"FUSE_KERNELS": "true"})
    assert parse_target("fp4+unfused") == ("fp4", None, {"FUSE_KERNELS": "false"})


@pytest.mark.skipif(not (torch.cuda.is_available() and fp8_rows.HAS_TRITON),
                    reason="the Triton kernel needs a CUDA GPU; the GPU runs run this test (docs/gpu/2026-12-07-issue25-fast-quant/next.sh)")
@pytest.mark.parametrize("ka", [3072, 0])  # a single block's proj_out input, a feed-forward's
def test_the_cuda_kernel_is_torchaos_quantization_but_for_rounding_edges(ka):
    g = torch.Generator("cuda").manual_seed(0)
    rows, zero_row = 300, 7
    a = torch.randn(rows, ka, device="cuda", dtype=torch.bfloat16, generator=g) * 0.5 if ka else None
    b = torch.randn(rows, 12288, device="cuda", dtype=torch.bfloat16, generator=g) * 2
    b[zero_row] = 0
    if a is not None:
        a[zero_row] = 0
    q, scale = fp8_rows.quantize_rows(a, b, True)
    q_want, scale_want = fp8_rows.reference(a, b, True)
    assert scale[zero_row].item() == 0 and not q[zero_row].float().any()  # torchao would give NaN (0 / 0)
    keep = torch.arange(rows, device="cuda") != zero_row
    assert torch.equal(scale[keep], scale_want[keep])
    got, want = q[keep].view(torch.uint8).int(), q_want[keep].view(torch.uint8).int()
    differ = got != want
    assert differ.float().mean().item() < 1e-3  # 0.012-0.014% on an H100
    assert ((got & 0x7F) - (want & 0x7F)).abs()[differ].le(1).all()  # one fp8 step at most
    assert not torch.isnan(q.float()).any()
