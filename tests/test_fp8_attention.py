"""FLUX's attention in fp8 through cuDNN (engine/fp8_attention.py, `attention=cudnn-fp8`). cuDNN's kernel runs on a
Hopper GPU only; here: the per-tensor scaling, the processor's plumbing (with an exact attention in the kernel's
place, FLUX blocks equal diffusers' bit for bit, with and without fuse_qkv's views), the settings that refuse it
where it cannot run. On a GPU with cuDNN 9.14+ and the frontend (docs/gpu run): the kernel against its reference
and bf16 attention, alone and compiled into blocks."""

import copy

import pytest
import test_qkv
import torch
from pydantic import ValidationError
from test_qkv import HEAD_DIM, _run

from flux_api.engine import fp8_attention
from flux_api.engine.qkv import fuse_qkv
from flux_api.settings import FP4Settings


def test_quantize_scales_the_largest_magnitude_to_e4m3s_largest_value():
    t = torch.tensor([[0.5, -3.0, 1e-3, 2.0]], dtype=torch.bfloat16)
    q, descale = fp8_attention.quantize(t)
    assert q.dtype == torch.float8_e4m3fn and descale.shape == (1,) and descale.dtype == torch.float32
    assert q.float().abs().max() == 448.0 and q.float()[0, 1] == -448.0
    assert descale.item() == pytest.approx(3.0 / 448)
    torch.testing.assert_close((q.float() * descale).to(torch.bfloat16), t, rtol=2 ** -3, atol=1e-3)
    zeros, d = fp8_attention.quantize(torch.zeros(3, 4))
    assert not zeros.float().any() and torch.isfinite(d).all()


def test_the_reference_stays_close_to_bf16_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 64, 2, HEAD_DIM, generator=g).to(torch.bfloat16) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v))).transpose(1, 2)
    got = fp8_attention.reference(q, k, v).float()
    assert got.shape == q.shape
    assert (got - want).norm() / want.norm() < 0.06  # e4m3: 3 mantissa bits, about 2-4% relative error here


def _exact(query, key, value, scale=None):  # what diffusers' dispatch computes (PyTorch's SDPA), in the kernel's place
    return torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=scale).transpose(1, 2)


@pytest.mark.parametrize("stacked", [False, True], ids=["separate", "fuse_qkv"])
def test_the_processor_is_diffusers_own_with_the_attention_swapped(stacked, monkeypatch):
    blocks = test_qkv._blocks(torch.float32)
    if stacked:
        fuse_qkv(blocks)
    plain = copy.deepcopy(blocks)
    assert fp8_attention.install(blocks) == 2  # the double block's attention (both streams) and the single block's
    assert type(blocks[0].attn.processor).__name__ == "Fp8AttentionProcessor"
    assert fp8_attention.install(blocks) == 0  # once only
    calls = []

    def exact(*args):
        calls.append(args[0].shape)
        return _exact(*args)

    monkeypatch.setattr(fp8_attention, "attention", exact)
    for got, want in zip(_run(blocks), _run(plain)):
        assert torch.equal(got, want)
    assert calls == [(1, test_qkv.IMG + test_qkv.TXT, test_qkv.HEADS, HEAD_DIM)] * 2  # both blocks, text tokens joined


def test_the_processor_with_the_fp8_reference_draws_close_to_diffusers(monkeypatch):
    blocks = test_qkv._blocks(torch.float32)
    plain = copy.deepcopy(blocks)
    fp8_attention.install(blocks)
    monkeypatch.setattr(fp8_attention, "attention", fp8_attention.reference)
    for got, want in zip(_run(blocks), _run(plain)):
        assert not torch.equal(got, want) and (got - want).norm() / want.norm() < 0.05


def test_settings_refuse_fp8_attention_where_it_cannot_run():
    with pytest.raises(ValidationError, match="attention=cudnn-fp8 needs a CUDA GPU"):
        FP4Settings(device="cpu", attention="cudnn-fp8")
    with pytest.raises(ValidationError, match="both replace diffusers' attention processor"):
        FP4Settings(attention="cudnn-fp8", fuse_rope=True)


def test_problem_says_what_is_missing():
    assert fp8_attention.problem(None) == "it needs a CUDA GPU"
    assert "needs Hopper or newer (sm_90+), not sm_89" in fp8_attention.problem((8, 9))
    why = fp8_attention.problem((9, 0))
    assert why is None or "nvidia-cudnn-frontend" in why or "cuDNN 9.14" in why


def test_the_service_refuses_it_at_start_up_saying_why(cache_dir):
    from test_speed_memory import H100, _planned

    from flux_api.engine.devices import GPU, Hardware
    from flux_api.engine.services import FP4FluxModelManager

    def choose(hw, **kw):
        return _planned(FP4FluxModelManager(FP4Settings(model="tiny", cache_dir=cache_dir, attention="cudnn-fp8", **kw),
                                            hw)).speed.attention

    if fp8_attention.problem((9, 0)) is None:
        assert choose(H100)[0] == "cudnn-fp8"
    else:  # no frontend here: start-up stops, naming the package
        with pytest.raises(ValueError, match="attention=cudnn-fp8: it needs cuDNN's Python frontend"):
            choose(H100)
    l40 = Hardware((GPU(0, "L40S (stand-in)", (8, 9), 48 * 2 ** 30),))
    with pytest.raises(ValueError, match=r"attention=cudnn-fp8: cuDNN's fp8 attention needs Hopper or newer \(sm_90\+\), not sm_89"):
        choose(l40)
    with pytest.raises(ValueError, match="attention=cudnn-fp8 runs on a GPU in one process"):
        choose(Hardware())


_GPU = torch.cuda.is_available() and fp8_attention.problem(torch.cuda.get_device_capability()) is None


@pytest.mark.skipif(not _GPU, reason="cuDNN's fp8 attention: Hopper+, cuDNN 9.14+, nvidia-cudnn-frontend")
@pytest.mark.parametrize("shape", [(1, 4608, 24, 128), (2, 300, 3, 64)], ids=["flux-1024", "odd"])
def test_cuda_kernel_matches_its_reference_and_stays_close_to_bf16(shape):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = ((torch.randn(*shape, generator=g, device="cuda") * s).to(torch.bfloat16) for s in (1.0, 1.0, 4.0))
    got = fp8_attention.attention(q, k, v).float()
    assert got.shape == shape and got.dtype == torch.float32
    ref = fp8_attention.reference(q, k, v).float()
    bf16 = _exact(q, k, v).float()
    # On an H100 (2026-12-07) at FLUX's 1024 and 768 px shapes: 0.039-0.040 from the reference (whose P is not rounded
    # to e4m3, cuDNN's is) and 0.059-0.060 from bf16 attention
    assert (got - ref).norm() / ref.norm() < 0.05
    assert (got - bf16).norm() / bf16.norm() < 0.08


@pytest.mark.skipif(not _GPU, reason="cuDNN's fp8 attention: Hopper+, cuDNN 9.14+, nvidia-cudnn-frontend")
def test_cuda_compiled_blocks_with_fp8_attention_replay_in_a_graph(monkeypatch):
    with torch.device("cuda"):
        blocks = test_qkv._blocks(torch.bfloat16)
    plain = copy.deepcopy(blocks)
    fp8_attention.install(blocks)
    for block in blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=True)
    want = _run(plain, torch.bfloat16, device="cuda")
    got = _run(blocks, torch.bfloat16, device="cuda")
    for a, b in zip(got, want):
        assert (a.float() - b.float()).norm() / b.float().norm() < 0.05
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _run(blocks, torch.bfloat16, device="cuda")
    graph.replay()
    for a, b in zip(captured, got):
        assert torch.equal(a, b)
