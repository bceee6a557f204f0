"""FLUX's attention in fp8 through cuDNN's fused kernel (issue 25; the `attention=cudnn-fp8` setting).

Of an FP4 step at 1024 px on an H100 (about 95 ms), the 57 attentions take about 23 ms in bf16 (cuDNN's fused
kernel, 0.399 ms a call: docs/gpu/2026-12-06-issue25-attention); the rest is fp8 GEMMs already. cuDNN (9.14 and
newer, Hopper and newer) runs the same fused attention with q, k, v, the softmax's P and the output in e4m3, through
its frontend's graph API (PyPI: nvidia-cudnn-frontend, imported as `cudnn`; the cuDNN library is the one torch
loaded). A bf16 output is Blackwell's only (the frontend's support surface, 1.23), so on Hopper the output is e4m3
too, scaled by v's scale (an average of v's rows is no larger than v) and turned back into the input's dtype after
the op, in torch ops that inductor compiles with what follows (whether it fused them with the next layer's fp8
quantization was not looked at in a trace).

Scales, per tensor (the kernel takes one descale each): q, k and v are each scaled so their largest magnitude is
e4m3's 448 (`quantize`, torch ops compiled with RoPE before them), the descale
amax / 448 handed over as a device tensor (and v's scale as the output's), so nothing waits on the host and the CUDA graph replays it. P = exp(s -
running max) is scaled by 64 as cuDNN's own tests do: its online softmax lets P reach e^4 before a rescale, times
64 / 2^4 within 448.

`install(transformer)` gives each of diffusers' FluxAttention modules (with diffusers' own processor) an
`Fp8AttentionProcessor`: diffusers' processor with this attention in place of its dispatch; with a mask or a
context-parallel config it is diffusers' processor unchanged. A plan per shape (cuDNN's heuristics, the first call
at a size: the warm-up's, or the first step at an unseen size before its CUDA graph is captured).

Measured on an H100 (2026-12-07, seventh session; docs/gpu/2026-12-07-issue25-seventh): the kernel is not much faster
than bf16 on Hopper with cuDNN 9.19 (415.6 against 433.1 us a call at 1024 px; 209.2 against 173.5 at 768 px, slower),
so the FP4 service gains 1% at 1024 px (2.712 -> 2.686 s, its image 47.14 dB from the defaults') and loses 7% at 768
px: off by default (`attention=auto` is sdpa). In the service it compiled, captured in CUDA graphs and compiled nothing
after the warm-up.
"""

from __future__ import annotations

import math
import threading

import torch

from .flux_processors import install as install_processor
from .flux_processors import project_out

E4M3_MAX = 448.0
P_SCALE = 64.0  # cuDNN's tests' scale for P (amax 1, a quarter of e4m3's largest power of two): see the docstring
MIN_BACKEND = 91400  # cuDNN 9.14: what the frontend's own fp8 attention tests ask

_UIDS = {name: uid for uid, name in enumerate(
    ("q", "k", "v", "o", "descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o", "amax_s", "amax_o"))}


def problem(capability: tuple[int, int] | None) -> str | None:
    """Why fp8 attention cannot run on a GPU of `capability` (None: no CUDA GPU) with this process's packages, or None."""
    if capability is None:
        return "it needs a CUDA GPU"
    if capability < (9, 0):
        return f"cuDNN's fp8 attention needs Hopper or newer (sm_90+), not sm_{capability[0]}{capability[1]}"
    try:
        import cudnn
    except ImportError:
        return "it needs cuDNN's Python frontend: pip install 'nvidia-cudnn-frontend==1.23.0'"
    except Exception as e:  # the frontend found no cuDNN library to load
        return f"cuDNN's Python frontend did not load: {type(e).__name__}: {e}"
    if cudnn.backend_version() < MIN_BACKEND:
        return f"it needs cuDNN 9.14 or newer, not {cudnn.backend_version_string()}"
    return None


def quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`t` in e4m3, scaled so its largest magnitude is 448, and the descale (amax / 448) as a [1] fp32 tensor."""
    amax = t.abs().amax().float().clamp(min=1e-12)
    return (t.float() * (E4M3_MAX / amax)).to(torch.float8_e4m3fn), (amax / E4M3_MAX).reshape(1)


class _Plans:
    """cuDNN graphs by shape and strides, with a handle per device. Built outside a CUDA graph capture (the
    capture's warm-up forwards build them), executed on the current stream."""

    def __init__(self):
        self._lock = threading.RLock()  # building a plan takes the handle, which takes the lock too
        self._graphs: dict[tuple, tuple] = {}
        self._devices: dict[int, tuple[object, dict[str, torch.Tensor]]] = {}  # index -> (handle, P's scales)
        self.run_lock = threading.Lock()  # the handle's stream is set per call: one call at a time (replicas' threads)

    def get(self, q, k, v, scale: float):
        key = (q.device.index, tuple(q.shape), q.stride(), tuple(k.shape), k.stride(), tuple(v.shape), v.stride(), scale)
        entry = self._graphs.get(key)
        if entry is None:
            with self._lock:
                entry = self._graphs.get(key)
                if entry is None:
                    if torch.cuda.is_current_stream_capturing():
                        raise RuntimeError(f"fp8 attention: no cuDNN plan for {key[1]} (the capture's warm-up builds it)")
                    entry = self._graphs[key] = self._build(q, k, v, scale)
        return entry

    def handle(self, device: torch.device):
        import cudnn

        entry = self._devices.get(device.index)
        if entry is None:
            with self._lock, torch.cuda.device(device):
                entry = self._devices.get(device.index)
                if entry is None:
                    entry = self._devices[device.index] = (cudnn.create_handle(), {
                        "descale_s": torch.full((1,), 1 / P_SCALE, device=device),
                        "scale_s": torch.full((1,), P_SCALE, device=device)})
        return entry

    def _build(self, q, k, v, scale: float):
        import cudnn

        handle, _ = self.handle(q.device)
        fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32, handle=handle)

        def tensor(name, t):  # (B, S, H, D) as cuDNN's (B, H, S, D), the strides as they are
            b, s, h, d = t.shape
            st = t.stride()
            return graph.tensor(uid=_UIDS[name], dim=(b, h, s, d), stride=(st[0], st[2], st[1], st[3]), data_type=fp8)

        def scalar(name):
            return graph.tensor(uid=_UIDS[name], dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=f32)

        o, _stats, amax_s, amax_o = graph.sdpa_fp8(
            q=tensor("q", q), k=tensor("k", k), v=tensor("v", v), descale_q=scalar("descale_q"),
            descale_k=scalar("descale_k"), descale_v=scalar("descale_v"), descale_s=scalar("descale_s"),
            scale_s=scalar("scale_s"), scale_o=scalar("scale_o"), generate_stats=False, attn_scale=scale,
            use_causal_mask=False)
        b, s, h, _ = q.shape
        d = v.shape[-1]
        o.set_uid(_UIDS["o"]).set_output(True).set_dim((b, h, s, d)).set_stride((s * h * d, d, h * d, 1)).set_data_type(fp8)
        for name, t in (("amax_s", amax_s), ("amax_o", amax_o)):
            t.set_uid(_UIDS[name]).set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(f32)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        return graph, graph.get_workspace_size()


_PLANS = _Plans()


@torch.library.custom_op("flux_api::cudnn_fp8_attention", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, descale_q: torch.Tensor, descale_k: torch.Tensor,
               descale_v: torch.Tensor, scale_o: torch.Tensor, scale: float) -> torch.Tensor:
    """The attention's output in e4m3, (B, S, H, D), times scale_o."""
    import cudnn

    graph, workspace_size = _PLANS.get(q, k, v, scale)
    handle, constants = _PLANS.handle(q.device)
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=torch.float8_e4m3fn, device=q.device)
    amax = torch.empty(8, dtype=torch.float32, device=q.device)  # written by the kernel, not read; 16-byte aligned
    workspace = torch.empty(workspace_size, dtype=torch.uint8, device=q.device)
    pack = {_UIDS["q"]: q, _UIDS["k"]: k, _UIDS["v"]: v, _UIDS["o"]: out, _UIDS["descale_q"]: descale_q,
            _UIDS["descale_k"]: descale_k, _UIDS["descale_v"]: descale_v, _UIDS["scale_o"]: scale_o,
            _UIDS["amax_s"]: amax[0:1], _UIDS["amax_o"]: amax[4:5], **{_UIDS[n]: t for n, t in constants.items()}}
    with _PLANS.run_lock:
        cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
        graph.execute(pack, workspace, handle=handle)
    return out


@_attention.register_fake
def _(q, k, v, descale_q, descale_k, descale_v, scale_o, scale):
    return q.new_empty(*q.shape[:3], v.shape[-1], dtype=torch.float8_e4m3fn)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, S, H, D) tensors, in fp8 (see the module's docstring): (B, S, H, D) in the
    query's dtype. Each head's last dim contiguous (the projections' views are)."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    (q, dq), (k, dk), (v, dv) = quantize(query), quantize(key), quantize(value)
    return (_attention(q, k, v, dq, dk, dv, 1 / dv, float(scale)).float() * dv).to(query.dtype)


def reference(query, key, value, scale: float | None = None) -> torch.Tensor:
    """What `attention` computes, in torch: q, k, v and the output rounded to e4m3 with the same scales, P not
    rounded (B, S, H, D)."""
    (q, dq), (k, dk), (v, dv) = quantize(query), quantize(key), quantize(value)
    q, k, v = (t.float() * d for t, d in ((q, dq), (k, dk), (v, dv)))
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           scale=scale).transpose(1, 2)
    return ((out / dv).to(torch.float8_e4m3fn).float() * dv).to(query.dtype)


def _processor_class():
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

    class Fp8AttentionProcessor(FluxAttnProcessor):
        """diffusers' FluxAttnProcessor (0.42) with cuDNN's fp8 attention in place of its attention dispatch;
        with a mask or a context-parallel config, diffusers' processor as it is."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            if attention_mask is not None or self._parallel_config is not None:
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
                attn, hidden_states, encoder_hidden_states)
            query, key = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim))), attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
            value = value.unflatten(-1, (-1, attn.head_dim))
            if attn.added_kv_proj_dim is not None:
                query = torch.cat([attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim))), query], dim=1)
                key = torch.cat([attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim))), key], dim=1)
                value = torch.cat([encoder_value.unflatten(-1, (-1, attn.head_dim)), value], dim=1)
            if image_rotary_emb is not None:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
            hidden_states = attention(query, key, value).flatten(2, 3)
            return project_out(attn, hidden_states, encoder_hidden_states)

    return Fp8AttentionProcessor


def install(transformer) -> int:
    """An Fp8AttentionProcessor for each of the transformer's FluxAttention modules with diffusers' own processor
    (its parallel config kept); how many. Before compiling."""
    return install_processor(transformer, _processor_class())
