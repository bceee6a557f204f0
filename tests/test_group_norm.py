"""The VAE's GroupNorm from split statistics (engine/group_norm.py, `split_group_norm`). The CPU checks the
arithmetic that follows the kernel (from each group's sums to the normalized values, ATen's CUDA rounding of
the mean and 1/std to the input's dtype) and that the swapped norms fall back to ATen's off CUDA; the CUDA
test runs the Triton kernel against ATen's GroupNorm."""

import pytest
import torch

from flux_api.engine import group_norm


def _aten_cuda_arithmetic(x, groups, weight, bias, eps):
    """ATen's CUDA GroupNorm in torch: Welford moments in fp32, the mean and 1/std stored in x's dtype, then
    x * a + b per channel in fp32 (RowwiseMomentsCUDAKernel<T>, ComputeFusedParams)."""
    n, c = x.shape[:2]
    rows = x.reshape(n * groups, -1).float()
    var, mean = torch.var_mean(rows, dim=-1, correction=0)
    mean, rstd = mean.to(x.dtype).float(), torch.rsqrt(var + eps).to(x.dtype).float()
    a = rstd.view(n, groups, 1).expand(n, groups, c // groups).reshape(n, c) * weight.float()
    b = bias.float() - a * mean.view(n, groups, 1).expand(n, groups, c // groups).reshape(n, c)
    shape = (n, c) + (1,) * (x.dim() - 2)
    return (x.float() * a.view(shape) + b.view(shape)).to(x.dtype)


@pytest.mark.parametrize("shape,groups,std,mean", [((1, 64, 20, 24), 32, 3, 1), ((2, 32, 7, 9), 8, 3, 1),
                                                   ((1, 16, 5, 5, 3), 4, 3, 1),
                                                   ((1, 64, 20, 24), 32, 0.25, 64)])  # a mean far above the spread
def test_the_normalization_from_group_sums_is_atens_gpu_arithmetic(shape, groups, std, mean):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * std + mean).to(torch.bfloat16)
    weight, bias = torch.randn(shape[1], generator=g).to(torch.bfloat16), torch.randn(shape[1], generator=g).to(torch.bfloat16)
    got = group_norm.normalize(x, group_norm.reference_sums(x, groups), groups, weight, bias, 1e-6)
    want = _aten_cuda_arithmetic(x, groups, weight, bias, 1e-6)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    # E[x^2] - mean^2 against Welford's: a last-bit difference of 1/std can move a value by one bf16 step
    differ = got != want
    assert differ.float().mean() < 0.01
    torch.testing.assert_close(got.float(), want.float(), rtol=0.01, atol=0.02)
    if mean < 8:  # a mean of 64 kept in bf16 (as ATen's CUDA kernel keeps it) is 0.25 off: a whole std
        no_affine = group_norm.normalize(x, group_norm.reference_sums(x, groups), groups, None, None, 1e-6)
        torch.testing.assert_close(no_affine.float(), torch.nn.functional.group_norm(x.float(), groups, eps=1e-6),
                                   rtol=0.02, atol=0.02)


def test_the_swapped_norms_run_atens_off_the_gpu():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = vae.decode(latent).sample
        assert group_norm.install(vae) == sum(type(m) is torch.nn.GroupNorm for m in vae.modules()) > 0
        assert torch.equal(vae.decode(latent).sample, want)  # the CPU: F.group_norm itself


@pytest.mark.skipif(not (torch.cuda.is_available() and group_norm.HAS_TRITON), reason="the kernel is Triton's, on CUDA")
@pytest.mark.parametrize("shape", [(1, 128, 256, 256), (1, 512, 128, 128), (2, 256, 33, 65)])
def test_the_cuda_kernel_gives_atens_group_norm(shape):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(shape, generator=g, device="cuda") * 2 + 0.5).to(torch.bfloat16)
    weight = torch.randn(shape[1], generator=g, device="cuda").to(torch.bfloat16)
    bias = torch.randn(shape[1], generator=g, device="cuda").to(torch.bfloat16)
    torch.testing.assert_close(group_norm.group_sums(x, 32), group_norm.reference_sums(x, 32), rtol=1e-4, atol=0.5)

    got = group_norm.group_norm(x, 32, weight, bias, 1e-6)
    want = torch.nn.functional.group_norm(x, 32, weight, bias, 1e-6)
    assert (got != want).float().mean() < 0.01
    torch.testing.assert_close(got.float(), want.float(), rtol=0.01, atol=0.02)
