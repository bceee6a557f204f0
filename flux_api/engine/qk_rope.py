"""q and k normalized and rotated, and q, k, v laid out for the attention kernel, in one pass (issue 25).

Between FLUX's q/k/v projections and its attention, diffusers' processor (FluxAttnProcessor, 0.42) applies an
RMSNorm per head to q and k (a double block: the text stream's with its own weights), concatenates the text and
image tokens, rotates q and k by the positions (RoPE, interleaved pairs) and hands (B, S, H, D) tensors to the
attention, which wants them as (B, H, S, D). Compiled, inductor does that in several kernels, the single blocks'
as a looped reduction: 5.4 ms of a 101 ms FP4 step in the 2026-12-06 H100 trace
(docs/gpu/2026-12-06-issue25/h100-fp4-trace.json.gz; 95 us a call for a single block's q and k at 1024 px,
about a third of the GPU's bandwidth).

`qk_norm_rope` does it in one Triton kernel: a program per token reads the token's q, k and v once (from the
text or the image stream, by position), and writes all three in (B, H, S, D) order, q and k normalized and
rotated. diffusers' arithmetic (torch's RMSNorm decomposition: fp32, x * rsqrt(mean(x^2) + eps) * weight,
rounded to the input's dtype; then x * cos + rotate(x) * sin in fp32, rounded once); the last bit of a value
may differ from inductor's kernels, which fuse the same steps in another order. Elsewhere (the CPU, a GPU
without Triton) `reference`, diffusers' own ops in torch, which is what the CPU tests compare the processor
with, bit for bit.

`install(transformer)` gives each FluxAttention whose norms are RMSNorms with weights a `FusedRopeProcessor`
(diffusers' processor with this op in the middle; its attention backend kept). Switched on by `fuse_rope`.
Written 2026-12-07 from the trace; its CUDA test (tests/test_qk_rope.py) passed on an H100 that day. End to end on
an H100 (docs/PERFORMANCE.md, 2026-12-07, fourth session) it is slower: an FP4 step 95.8 -> 98.7 ms, LoRA requests
more so; the image 47.2 dB from the defaults'. It writes v too (170 MB a call at 1024 px against about 113 MB for
diffusers' q and k); what costs the rest is not known (the kernel probe,
docs/gpu/2026-12-07-issue25-levers-psnr/rope_probe.py, has not run on a GPU). Off by default.
"""

from __future__ import annotations

import torch

from .flux_processors import install as install_processor
from .flux_processors import project_out
from .fp8_rows import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl


def reference(q, k, v, txt, weights, eps: float, cos, sin, head_dim: int):
    """diffusers' processor between the projections and the attention, in torch (its RMSNorm is torch's
    F.rms_norm; its RoPE `apply_rotary_emb`): q, k, v [B, S, H * D] of the image stream (a single block: all
    the tokens), `txt` (q, k, v) of the text stream or None, `weights` the norms' (q, k, text q, text k).
    (q, k, v) as (B, S, H, D)."""
    from diffusers.models.embeddings import apply_rotary_emb

    def heads(t):
        return t.unflatten(-1, (-1, head_dim))

    def norm(t, weight):
        return torch.nn.functional.rms_norm(heads(t), (head_dim,), weight, eps)

    q, k, v = norm(q, weights[0]), norm(k, weights[1]), heads(v)
    if txt is not None:
        q = torch.cat([norm(txt[0], weights[2]), q], dim=1)
        k = torch.cat([norm(txt[1], weights[3]), k], dim=1)
        v = torch.cat([heads(txt[2]), v], dim=1)
    return apply_rotary_emb(q, (cos, sin), sequence_dim=1), apply_rotary_emb(k, (cos, sin), sequence_dim=1), v


if HAS_TRITON:

    @triton.jit
    def _norm_rope(x_ptr, w_ptr, cos, sin, h, d, mask, eps, D: tl.constexpr):
        # One token's heads [HB, D]: RMSNorm per head as torch's decomposition (fp32, times the weight, rounded
        # to bf16), then RoPE on interleaved pairs: out[2j] = x[2j] cos - x[2j+1] sin, out[2j+1] = x[2j+1] cos
        # + x[2j] sin. The pair's other value is read again (from L1) instead of shuffled between registers.
        x = tl.load(x_ptr + h * D + d, mask=mask, other=0.0).to(tl.float32)
        other = tl.load(x_ptr + h * D + (d ^ 1), mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None]
        y = (x * rstd * tl.load(w_ptr + d).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
        y_other = (other * rstd * tl.load(w_ptr + (d ^ 1)).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
        return y * cos + tl.where(d % 2 == 0, -y_other, y_other) * sin

    @triton.jit
    def _kernel(q_img, k_img, v_img, q_txt, k_txt, v_txt, wq_img, wk_img, wq_txt, wk_txt, cos_ptr, sin_ptr,
                q_out, k_out, v_out, img_batch, img_token, txt_batch, txt_token, S_TXT, S, eps,
                H: tl.constexpr, HB: tl.constexpr, D: tl.constexpr):
        # A program per token s of batch b: its q, k and v rows (H * D values, H padded to HB) from the text
        # stream (s < S_TXT) or the image stream, written at out[b, :, s, :].
        s = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        h = tl.arange(0, HB)[:, None]
        d = tl.arange(0, D)[None, :]
        mask = h < H
        if s < S_TXT:
            row = b * txt_batch + s * txt_token
            q, k, v, wq, wk = q_txt + row, k_txt + row, v_txt + row, wq_txt, wk_txt
        else:
            row = b * img_batch + (s - S_TXT) * img_token
            q, k, v, wq, wk = q_img + row, k_img + row, v_img + row, wq_img, wk_img
        cos = tl.load(cos_ptr + s * D + d).to(tl.float32)
        sin = tl.load(sin_ptr + s * D + d).to(tl.float32)
        out = ((b * H + h) * S + s) * D + d
        tl.store(q_out + out, _norm_rope(q, wq, cos, sin, h, d, mask, eps, D).to(tl.bfloat16), mask=mask)
        tl.store(k_out + out, _norm_rope(k, wk, cos, sin, h, d, mask, eps, D).to(tl.bfloat16), mask=mask)
        tl.store(v_out + out, tl.load(v + h * D + d, mask=mask, other=0.0), mask=mask)


WARPS = 4  # per program (a token's 24 heads of 128, padded to 32): not tuned yet; the GPU probe tries 4, 8 and 16


def row_strides(q, k, v) -> tuple[int, int] | None:
    """(batch, token) strides shared by q, k and v [B, S, H * D], each with unit stride along its last dim
    (three views of one fused projection share them, as do three separate contiguous ones); else None."""
    strides = {(t.stride(0), t.stride(1), t.stride(2)) for t in (q, k, v)}
    if len(strides) != 1:
        return None
    batch, token, last = strides.pop()
    return (batch, token) if last == 1 else None


def launch(q, k, v, txt, weights, eps: float, cos, sin, head_dim: int):
    """The Triton kernel: (q, k, v), each [B, H, S, D] contiguous. bf16 q, k, v (and txt's) on one CUDA device,
    as `fits` says."""
    batch, s_img, width = q.shape
    heads = width // head_dim
    s_txt = txt[0].shape[1] if txt is not None else 0
    seq = s_img + s_txt
    outs = [q.new_empty(batch, heads, seq, head_dim) for _ in range(3)]
    tq, tk, tv = txt if txt is not None else (q, k, v)
    wq_txt, wk_txt = (weights[2], weights[3]) if txt is not None else weights[:2]
    if batch and seq:
        with torch.cuda.device(q.device):  # Triton launches on the current device; the tensors may be elsewhere
            _kernel[(seq, batch)](q, k, v, tq, tk, tv, weights[0], weights[1], wq_txt, wk_txt, cos, sin, *outs,
                                  *row_strides(q, k, v), *row_strides(tq, tk, tv), s_txt, seq, eps,
                                  H=heads, HB=triton.next_power_of_2(heads), D=head_dim, num_warps=WARPS)
    return outs


def fits(q, k, v, txt, weights, cos, sin, head_dim: int) -> bool:
    """Whether the kernel takes these: bf16 on one CUDA device, a power-of-two head size, each stream's q/k/v of one
    shape sharing their strides (and the streams one batch and width), the norms' weights [D] of one dtype, cos and
    sin [S, D] contiguous in fp32 or bf16. Elsewhere the op runs its reference."""
    streams = [(q, k, v)] + ([tuple(txt)] if txt is not None else [])
    tensors = [t for stream in streams for t in stream]
    seq = sum(stream[0].shape[1] for stream in streams)
    return (HAS_TRITON and q.is_cuda and all(t.dtype == torch.bfloat16 and t.device == q.device for t in tensors)
            and head_dim & (head_dim - 1) == 0 and q.dim() == 3 and q.shape[-1] % head_dim == 0
            and all(t.dim() == 3 and (t.shape[0], t.shape[2]) == (q.shape[0], q.shape[2]) for t in tensors)
            and all(len({t.shape for t in stream}) == 1 and row_strides(*stream) is not None for stream in streams)
            and len({w.dtype for w in weights}) == 1 and all(w.shape == (head_dim,) and w.device == q.device for w in weights)
            and all(t.dtype in (torch.float32, torch.bfloat16) and t.device == q.device and t.is_contiguous()
                    and t.shape == (seq, head_dim) for t in (cos, sin)))


@torch.library.custom_op("flux_api::qk_norm_rope", mutates_args=())
def _op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_txt: torch.Tensor | None, k_txt: torch.Tensor | None,
        v_txt: torch.Tensor | None, weights: list[torch.Tensor], eps: float, cos: torch.Tensor, sin: torch.Tensor,
        head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    txt = (q_txt, k_txt, v_txt) if q_txt is not None else None
    if fits(q, k, v, txt, weights, cos, sin, head_dim):
        return tuple(launch(q, k, v, txt, weights, eps, cos, sin, head_dim))
    # copies (a custom op may not return its input, which .contiguous() would where the view already is: one head)
    return tuple(t.transpose(1, 2).clone(memory_format=torch.contiguous_format)
                 for t in reference(q, k, v, txt, weights, eps, cos, sin, head_dim))


@_op.register_fake
def _(q, k, v, q_txt, k_txt, v_txt, weights, eps, cos, sin, head_dim):
    seq = q.shape[1] + (q_txt.shape[1] if q_txt is not None else 0)
    return tuple(q.new_empty(q.shape[0], q.shape[2] // head_dim, seq, head_dim) for _ in range(3))


def qk_norm_rope(q, k, v, txt, weights, eps: float, cos, sin, head_dim: int):
    """(q, k, v) as (B, S, H, D) views of (B, H, S, D) tensors (see the module's docstring); one op for
    torch.compile, opaque to inductor, captured in the CUDA graph like any kernel."""
    q_txt, k_txt, v_txt = txt if txt is not None else (None, None, None)
    outs = _op(q, k, v, q_txt, k_txt, v_txt, list(weights), float(eps), cos, sin, head_dim)
    return tuple(t.transpose(1, 2) for t in outs)


def _eps(norm) -> float:
    return norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps


def _fusable(attn) -> bool:
    norms = [attn.norm_q, attn.norm_k] + ([attn.norm_added_q, attn.norm_added_k] if attn.added_kv_proj_dim is not None else [])
    return (all(type(n) is torch.nn.RMSNorm and n.weight is not None and tuple(n.normalized_shape) == (attn.head_dim,)
                for n in norms)
            and attn.head_dim & (attn.head_dim - 1) == 0 and len({_eps(n) for n in norms}) == 1)


def _processor_class():
    from diffusers.models.transformers.transformer_flux import (
        FluxAttnProcessor, _get_qkv_projections, dispatch_attention_fn)

    class FusedRopeProcessor(FluxAttnProcessor):
        """diffusers' FluxAttnProcessor (0.42) with the norms, the concatenation, RoPE and the layout in one op
        (`qk_norm_rope`; where the kernel does not run, its reference: diffusers' own ops). Without positions or
        with a mask, diffusers' processor as it is."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            if attention_mask is not None or not isinstance(image_rotary_emb, tuple):
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
                attn, hidden_states, encoder_hidden_states)
            txt, weights = None, [attn.norm_q.weight, attn.norm_k.weight]
            if attn.added_kv_proj_dim is not None:
                txt = (encoder_query, encoder_key, encoder_value)
                weights += [attn.norm_added_q.weight, attn.norm_added_k.weight]
            query, key, value = qk_norm_rope(query, key, value, txt, weights, _eps(attn.norm_q),
                                             *image_rotary_emb, attn.head_dim)
            hidden_states = dispatch_attention_fn(query, key, value, attn_mask=None, backend=self._attention_backend,
                                                  parallel_config=self._parallel_config)
            hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
            return project_out(attn, hidden_states, encoder_hidden_states)

    return FusedRopeProcessor


def install(transformer) -> int:
    """A FusedRopeProcessor for each of the transformer's FluxAttention modules with diffusers' own processor,
    RMSNorms with weights of one eps and a power-of-two head size, its attention backend and parallel config kept;
    how many. Before compiling. (The kernel runs on bf16 CUDA tensors, the services' GPU dtype; elsewhere the op's
    reference, diffusers' ops.)"""
    return install_processor(transformer, _processor_class(), _fusable)
