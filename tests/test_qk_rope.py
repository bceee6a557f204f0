"""q/k RMSNorm, RoPE and the attention's layout in one op (engine/qk_rope.py, the `fuse_rope` setting). On the
CPU the op runs its reference, diffusers' own ops: FLUX blocks with the fused processor equal diffusers' blocks
bit for bit in eager mode (with and without fuse_qkv's views), and compiled whole (the op opaque) within fp32
rounding of them. The Triton kernel runs in Triton's CPU interpreter where triton is installed (a subprocess: the
interpreter is chosen at import), and on CUDA: alone, and in compiled bf16 blocks against diffusers'."""

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_qkv
import torch
from test_qkv import DIM, HEAD_DIM, HEADS, IMG, TXT, _run

from flux_api.engine import qk_rope
from flux_api.engine.qkv import fuse_qkv


def _blocks(dtype):
    """test_qkv's double and single block, their q/k norms' weights other than ones."""
    blocks = test_qkv._blocks(dtype)
    for norm in blocks.modules():  # norm weights other than ones, so that a weight read from the wrong norm shows
        if type(norm) is torch.nn.RMSNorm:
            with torch.no_grad():
                norm.weight.uniform_(0.5, 1.5)
    return blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stacked", [False, True], ids=["separate", "fuse_qkv"])
def test_the_fused_processor_gives_diffusers_blocks_bit_for_bit(dtype, stacked):
    blocks = _blocks(dtype)
    if stacked:
        fuse_qkv(blocks)
    plain = copy.deepcopy(blocks)
    assert qk_rope.install(blocks) == 2  # the double block's attention (both streams) and the single block's
    assert type(blocks[0].attn.processor).__name__ == "FusedRopeProcessor"
    assert qk_rope.install(blocks) == 0  # once only
    for got, want in zip(_run(blocks, dtype), _run(plain, dtype)):
        assert torch.equal(got, want)


def test_the_op_lays_out_q_k_v_for_the_attention():
    g = torch.Generator().manual_seed(2)
    q, k, v, tq, tk, tv = (torch.randn(2, n, HEADS * HEAD_DIM, generator=g) for n in (IMG, IMG, IMG, TXT, TXT, TXT))
    weights = [torch.rand(HEAD_DIM, generator=g) + 0.5 for _ in range(4)]
    freqs = torch.randn(IMG + TXT, HEAD_DIM, generator=g)
    cos, sin = freqs.cos(), freqs.sin()
    got = qk_rope.qk_norm_rope(q, k, v, (tq, tk, tv), weights, 1e-6, cos, sin, HEAD_DIM)
    for t in got:
        assert t.shape == (2, IMG + TXT, HEADS, HEAD_DIM)
        assert t.transpose(1, 2).is_contiguous()  # what the attention reads: (B, H, S, D) in order
    # the text tokens first: v as it came, q and k normed (by hand here) with their stream's own weights, rotated
    assert torch.equal(got[2], torch.cat([tv, v], 1).unflatten(-1, (HEADS, HEAD_DIM)))

    def by_hand(x, weight, first):
        x = x.unflatten(-1, (HEADS, HEAD_DIM)).float()
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
        pairs = y.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
        c, s = cos[first:first + x.shape[1], None], sin[first:first + x.shape[1], None]
        return y * c + rotated * s

    for i, (txt, img) in enumerate(((tq, q), (tk, k))):
        torch.testing.assert_close(got[i][:, :TXT], by_hand(txt, weights[2 + i], 0))
        torch.testing.assert_close(got[i][:, TXT:], by_hand(img, weights[i], TXT))


def test_the_reference_path_returns_copies_even_with_one_head():
    # A custom op may not return its input: with one head (or one token) the (B, H, S, D) view of v already is
    # contiguous, and .contiguous() would have returned v itself.
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 5, HEAD_DIM, generator=g) for _ in range(3))
    freqs = torch.randn(5, HEAD_DIM, generator=g)
    out = qk_rope.qk_norm_rope(q, k, v, None, [torch.ones(HEAD_DIM)] * 2, 1e-6, freqs.cos(), freqs.sin(), HEAD_DIM)
    assert torch.equal(out[2], v.unflatten(-1, (1, HEAD_DIM))) and out[2].data_ptr() != v.data_ptr()


def test_norms_without_weights_keep_diffusers_processor():
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    block = FluxSingleTransformerBlock(DIM, HEADS, HEAD_DIM)
    block.attn.norm_q = torch.nn.RMSNorm(HEAD_DIM, elementwise_affine=False)
    assert qk_rope.install(torch.nn.ModuleList([block])) == 0
    assert type(block.attn.processor).__name__ == "FluxAttnProcessor"


def test_the_blocks_compile_whole_with_the_op():
    torch._dynamo.reset()
    blocks = _blocks(torch.float32)
    fuse_qkv(blocks)
    plain = copy.deepcopy(blocks)  # diffusers' processor, eager
    qk_rope.install(blocks)
    for block in blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=True)
    for img in (IMG, 40):  # two sizes: the op's fake gives the shapes under dynamic ones
        for got, want in zip(_run(blocks, torch.float32, img), _run(plain, torch.float32, img)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


CHECK = Path(__file__).with_name("qk_rope_interpreter.py")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (its CPU interpreter)")
def test_the_kernel_in_tritons_cpu_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run([sys.executable, str(CHECK)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stdout + run.stderr


@pytest.mark.skipif(not (torch.cuda.is_available() and qk_rope.HAS_TRITON), reason="the kernel is Triton's, on CUDA")
@pytest.mark.parametrize("shape", [(1, 512, 4096, 24, 128), (2, 0, 333, 24, 128), (1, 7, 50, 3, 64)])
def test_the_cuda_kernel_gives_diffusers_arithmetic(shape):
    batch, s_txt, s_img, heads, dim = shape
    g = torch.Generator(device="cuda").manual_seed(0)

    def stream(n):  # one fused projection's three views, as fuse_qkv makes them
        return (torch.randn(batch, n, 3 * heads * dim, generator=g, device="cuda") * 3).to(torch.bfloat16).chunk(3, -1)

    q, k, v = stream(s_img)
    txt = stream(s_txt) if s_txt else None
    weights = [(torch.rand(dim, generator=g, device="cuda") + 0.5).to(torch.bfloat16) for _ in range(4)]
    freqs = torch.randn(s_txt + s_img, dim, generator=g, device="cuda")
    cos, sin = freqs.cos(), freqs.sin()
    assert qk_rope.fits(q, k, v, txt, weights, cos, sin, dim)
    got = [t.transpose(1, 2) for t in qk_rope.launch(q, k, v, txt, weights, 1e-6, cos, sin, dim)]
    want = qk_rope.reference(q, k, v, txt, weights, 1e-6, cos, sin, dim)
    assert torch.equal(got[2], want[2])
    for a, b in zip(got[:2], want[:2]):  # fp32 sums in another order: a value's last bit
        assert (a != b).float().mean() < 0.01
        torch.testing.assert_close(a.float(), b.float(), rtol=0.01, atol=0.02)


@pytest.mark.skipif(not (torch.cuda.is_available() and qk_rope.HAS_TRITON), reason="the kernel is Triton's, on CUDA")
@pytest.mark.parametrize("stacked", [False, True], ids=["separate", "fuse_qkv"])
def test_cuda_compiled_bf16_blocks_run_the_kernel_and_draw_what_diffusers_draws(stacked, monkeypatch):
    """The processor's whole path on CUDA: compiled blocks call the op, the op takes the kernel (not its
    reference), and the blocks' outputs are within bf16 rounding of diffusers' eager blocks."""
    torch._dynamo.reset()
    launches = []
    launch = qk_rope.launch
    monkeypatch.setattr(qk_rope, "launch", lambda *a, **k: launches.append(1) or launch(*a, **k))
    with torch.device("cuda"):
        blocks = _blocks(torch.bfloat16)
    if stacked:
        fuse_qkv(blocks)
    plain = copy.deepcopy(blocks)
    assert qk_rope.install(blocks) == 2
    for block in blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=True)
    got, want = _run(blocks, torch.bfloat16, device="cuda"), _run(plain, torch.bfloat16, device="cuda")
    assert len(launches) == 2  # one a block: the kernel ran, not the reference
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)
