"""Run by tests/test_qk_rope.py in a subprocess with TRITON_INTERPRET=1: qk_rope's Triton kernel on the CPU against
the same arithmetic in torch. The interpreter casts fp32 to bf16 by truncation (a GPU rounds to nearest), so the
torch arithmetic here truncates where the kernel casts; the layout, the streams, the padded heads and the pairs
are what this checks. Prints OK when every value is equal."""

import contextlib

import torch

torch.cuda.device = lambda *a, **k: contextlib.nullcontext()  # the kernel's launch guard; the interpreter runs on the CPU

from diffusers.models.transformers.transformer_flux import FluxPosEmbed  # noqa: E402

from flux_api.engine import qk_rope  # noqa: E402


def truncated(x):
    return (x.float().view(torch.int32) & -65536).view(torch.float32)


def arithmetic(q, k, v, txt, weights, eps, cos, sin, dim):
    streams = ([(txt[0], txt[1], txt[2], weights[2], weights[3])] if txt is not None else []) + [(q, k, v, weights[0], weights[1])]
    sign = torch.tensor([-1.0, 1.0]).repeat(dim // 2)
    outs = []
    for i in range(2):
        normed = []
        for stream in streams:
            x = stream[i].unflatten(-1, (-1, dim)).float()
            normed.append(truncated(x * torch.rsqrt((x * x).sum(-1, keepdim=True) / dim + eps) * stream[3 + i].float()))
        y = torch.cat(normed, 1)
        partner = y.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * sign
        outs.append(truncated(y * cos[None, :, None] + partner * sin[None, :, None]))
    outs.append(torch.cat([s[2].unflatten(-1, (-1, dim)) for s in streams], 1).float())
    return outs


def main():
    assert qk_rope.HAS_TRITON
    torch.manual_seed(0)
    for batch, s_txt, s_img, heads, dim, stacked in [(1, 5, 12, 3, 16, False), (2, 4, 9, 6, 32, True),
                                                     (1, 0, 11, 5, 16, True), (1, 3, 7, 24, 128, True)]:
        def stream(n):
            if stacked:
                return (torch.randn(batch, n, 3 * heads * dim) * 3).to(torch.bfloat16).chunk(3, dim=-1)
            return tuple((torch.randn(batch, n, heads * dim) * 3).to(torch.bfloat16) for _ in range(3))

        q, k, v = stream(s_img)
        txt = stream(s_txt) if s_txt else None
        weights = [(torch.rand(dim) + 0.5).to(torch.bfloat16) for _ in range(4)]
        ids = torch.randint(0, 64, (s_txt + s_img, 3)).float()
        cos, sin = FluxPosEmbed(theta=10000, axes_dim=[dim // 4, 3 * dim // 8, 3 * dim // 8])(ids)
        got = [t.transpose(1, 2).float() for t in qk_rope.launch(q, k, v, txt, weights, 1e-6, cos, sin, dim)]
        for name, a, b in zip("qkv", got, arithmetic(q, k, v, txt, weights, 1e-6, cos, sin, dim)):
            assert torch.equal(a, b), (batch, s_txt, s_img, heads, dim, stacked, name, (a - b).abs().max())
    print("OK")


if __name__ == "__main__":
    main()
