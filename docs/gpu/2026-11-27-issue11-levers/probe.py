"""The levers of issue 11, measured on one GPU on the full-size FLUX transformer (random weights), no HTTP.

    python docs/gpu/2026-11-27-issue11-levers/probe.py A bf16   # then: ... probe.py fp8  (each < 10 min)

A. attention alone at 1024 px (1x24x4608x128): torch SDPA (default, FLASH, CUDNN, EFFICIENT) and cuDNN fp8
   SDPA (nvidia-cudnn-frontend), ms per call and error against bf16.
B. bf16 transformer: eager; compiled regional (dynamic shapes) + CUDA graph; a LoRA slot (rank 128 on every
   Linear, peft layers) off and on; compiles after warm-up across unseen sizes; static compile; cuDNN attention.
C. fp8 (torchao PerRow) the same, plus max-autotune. One JSON line per measurement (RESULT ...) and $OUT/probe.json.
Records beside this file (h100-*.json, *.log); what they say: docs/PERFORMANCE.md.
"""
import json
import math
import os
import sys
import time
import traceback

import torch

OUT = os.environ.get("OUT", "/tmp")
RESULTS = []
T0 = time.perf_counter()


def emit(**kw):
    kw["t"] = round(time.perf_counter() - T0, 1)
    RESULTS.append(kw)
    print("RESULT", json.dumps(kw), flush=True)
    with open(f"{OUT}/probe.json", "w") as f:
        json.dump(RESULTS, f, indent=1)


def timed(fn, iters=10, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / iters


def section(name, fn):
    try:
        fn()
    except Exception as ex:
        traceback.print_exc()
        emit(section=name, error=f"{type(ex).__name__}: {str(ex)[:400]}")


# ---------------------------------------------------------------- A. attention
def attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 24, 4608, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16() if False else None
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        ref = F.scaled_dot_product_attention(q, k, v)
    flops = 4 * 4608 * 4608 * 128 * 24
    for name, backends in (("default", None), ("flash", [SDPBackend.FLASH_ATTENTION]), ("cudnn", [SDPBackend.CUDNN_ATTENTION]),
                           ("efficient", [SDPBackend.EFFICIENT_ATTENTION])):
        try:
            if backends is None:
                ms = timed(lambda: F.scaled_dot_product_attention(q, k, v), 20)
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                with sdpa_kernel(backends):
                    ms = timed(lambda: F.scaled_dot_product_attention(q, k, v), 20)
                    out = F.scaled_dot_product_attention(q, k, v)
            err = (out.float() - ref.float()).abs().max().item()
            emit(section="A", what=f"sdpa {name} bf16", ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1), max_err_vs_flash=err)
        except Exception as ex:
            emit(section="A", what=f"sdpa {name}", error=str(ex)[:200])

    import cudnn

    emit(section="A", what="cudnn versions", backend=cudnn.backend_version(), frontend=getattr(cudnn, "__version__", "?"))
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
    shape, stride = list(q.shape), list(q.stride())
    tq, tk, tv = (graph.tensor(name=n, dim=shape, stride=stride, data_type=e4m3) for n in ("q", "k", "v"))
    scal = dict(dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32)
    dq, dk, dv, ds, ss, so = (graph.tensor(name=n, **scal) for n in ("dq", "dk", "dv", "ds", "ss", "so"))
    o, _, amax_s, amax_o = graph.sdpa_fp8(q=tq, k=tk, v=tv, descale_q=dq, descale_k=dk, descale_v=dv, descale_s=ds,
                                          scale_s=ss, scale_o=so, is_inference=True, attn_scale=1 / math.sqrt(128),
                                          use_causal_mask=False, name="sdpa")
    o.set_output(True).set_dim(shape).set_stride(stride).set_data_type(e4m3)
    for a in (amax_s, amax_o):
        a.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    ws = torch.empty(graph.get_workspace_size(), device="cuda", dtype=torch.uint8)
    one = lambda x: torch.full((1, 1, 1, 1), x, device="cuda", dtype=torch.float32)
    o_buf = torch.empty_like(q, dtype=torch.float8_e4m3fn)
    amax_s_buf, amax_o_buf = one(0.0), one(0.0)
    # Per-tensor scales: x_fp8 = x * (448 / amax), descale = amax / 448. S (softmax probs) in [0, 1]:
    # scale_s 448, descale_s 1/448. The output's scale: O is a convex mix of V, so |O| <= amax(V).
    FP8_MAX = 448.0

    def run_fp8():
        aq, ak, av = q.abs().amax().float(), k.abs().amax().float(), v.abs().amax().float()
        sq, sk, sv = FP8_MAX / aq, FP8_MAX / ak, FP8_MAX / av
        q8, k8, v8 = ((x * s).to(torch.float8_e4m3fn) for x, s in ((q, sq), (k, sk), (v, sv)))
        pack = {tq: q8, tk: k8, tv: v8, dq: (1 / sq).view(1, 1, 1, 1), dk: (1 / sk).view(1, 1, 1, 1),
                dv: (1 / sv).view(1, 1, 1, 1), ds: one(1 / FP8_MAX), ss: one(FP8_MAX), so: sv.view(1, 1, 1, 1),
                o: o_buf, amax_s: amax_s_buf, amax_o: amax_o_buf}
        graph.execute(pack, ws, handle=handle)
        return o_buf.to(torch.bfloat16) / sv.to(torch.bfloat16)

    out = run_fp8()
    torch.cuda.synchronize()
    diff = out.float() - ref.float()
    psnr = 10 * math.log10(ref.float().abs().max().item() ** 2 / diff.pow(2).mean().item())
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0).item()
    ms = timed(run_fp8, 20)
    # the kernel alone (inputs already fp8)
    aq = q.abs().amax().float()
    q8 = (q * (FP8_MAX / aq)).to(torch.float8_e4m3fn)
    pack = {tq: q8, tk: q8, tv: q8, dq: one(1.0), dk: one(1.0), dv: one(1.0), ds: one(1 / FP8_MAX), ss: one(FP8_MAX),
            so: one(1.0), o: o_buf, amax_s: amax_s_buf, amax_o: amax_o_buf}
    kms = timed(lambda: graph.execute(pack, ws, handle=handle), 20)
    emit(section="A", what="cudnn sdpa_fp8 (per-tensor scales, quantize+dequantize included)", ms=round(ms, 3),
         kernel_only_ms=round(kms, 3), tflops_kernel=round(flops / kms / 1e9, 1), psnr_vs_bf16_db=round(psnr, 1), cosine=cos)


# ---------------------------------------------------------------- B/C. the transformer
def build(fp8: bool):
    from diffusers import FluxTransformer2DModel

    sys.path.insert(0, os.getcwd())
    from flux_api.engine.tiny import SIZES

    t = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        torch.manual_seed(0)
        tr = FluxTransformer2DModel(patch_size=1, in_channels=64, guidance_embeds=True, **SIZES["full"]["transformer"]).eval()
    torch.set_default_dtype(old)
    tr.requires_grad_(False)
    if fp8:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(tr, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    emit(section="build", fp8=fp8, s=round(time.perf_counter() - t, 1), gib=round(torch.cuda.memory_allocated() / 2**30, 1))
    return tr


def inputs(w, h):
    g = torch.Generator(device="cuda").manual_seed(1)
    n = (w // 16) * (h // 16)
    ids = torch.zeros(h // 16, w // 16, 3, device="cuda")
    ids[..., 1] = torch.arange(h // 16, device="cuda")[:, None]
    ids[..., 2] = torch.arange(w // 16, device="cuda")[None, :]
    bf = torch.bfloat16
    return dict(hidden_states=torch.randn(1, n, 64, device="cuda", dtype=bf, generator=g),
                encoder_hidden_states=torch.randn(1, 512, 4096, device="cuda", dtype=bf, generator=g),
                pooled_projections=torch.randn(1, 768, device="cuda", dtype=bf, generator=g),
                timestep=torch.tensor([0.5], device="cuda", dtype=bf), img_ids=ids.reshape(-1, 3),
                txt_ids=torch.zeros(512, 3, device="cuda"), guidance=torch.tensor([3.5], device="cuda", dtype=bf))


class Graphs:
    """A CUDA graph per (variant, shape) of the whole forward (what flux_api's GraphedForward does)."""

    def __init__(self, tr):
        self.tr, self.graphs, self.pool = tr, {}, torch.cuda.graph_pool_handle()

    def __call__(self, variant, kw):
        key = (variant, kw["hidden_states"].shape)
        if key not in self.graphs:
            static = {k: v.clone() for k, v in kw.items()}
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    self.tr(**static, return_dict=False)
            torch.cuda.current_stream().wait_stream(s)
            gr = torch.cuda.CUDAGraph()
            with torch.cuda.graph(gr, pool=self.pool):
                out = self.tr(**static, return_dict=False)[0]
            self.graphs[key] = (gr, static, out)
        gr, static, out = self.graphs[key]
        for k, v in kw.items():
            static[k].copy_(v)
        gr.replay()
        return out


def lora_targets(tr):
    return [n for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear) and ("transformer_blocks." in n)]


def add_slot(tr, rank):
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = lora_targets(tr)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), tr, adapter_name="slot")
    layers = [m for m in tr.modules() if isinstance(m, BaseTunerLayer)]
    g = torch.Generator(device="cuda").manual_seed(5)
    for m in layers:
        m.lora_A["slot"].to(torch.bfloat16)
        m.lora_B["slot"].to(torch.bfloat16)
        with torch.no_grad():
            m.lora_B["slot"].weight.copy_(torch.randn(m.lora_B["slot"].weight.shape, generator=g, device="cuda") * 1e-3)
    return layers, len(targets)


def set_lora(layers, on: bool):
    for m in layers:
        m.enable_adapters(on)


def compiles():
    from torch._dynamo.utils import counters

    return sum(counters["stats"].values()) and counters["stats"]["unique_graphs"]


def transformer(fp8: bool):
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 64
    name = "fp8" if fp8 else "bf16"
    tr = build(fp8)
    kw = inputs(1024, 1024)
    with torch.inference_mode():
        eager = timed(lambda: tr(**kw, return_dict=False), 3, 1)
        emit(section=name, what="eager", ms_step=round(eager, 1))
        ref = tr(**kw, return_dict=False)[0].float()
    layers, n_targets = add_slot(tr, 128)
    set_lora(layers, False)
    with torch.inference_mode():
        same = torch.equal(tr(**kw, return_dict=False)[0].float(), ref)
        set_lora(layers, True)
        lora_eager = timed(lambda: tr(**kw, return_dict=False), 3, 1)
        set_lora(layers, False)
    emit(section=name, what="eager, LoRA slot r128 enabled", ms_step=round(lora_eager, 1), targets=n_targets,
         disabled_slot_is_bitwise_base=same)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor")
    t = time.perf_counter()
    tr.compile_repeated_blocks(fullgraph=True, dynamic=True)  # one graph for every size
    gr = Graphs(tr)
    warm = {}
    with torch.inference_mode():
        for px in (1024, 512):
            for on in (False, True):
                set_lora(layers, on)
                t1 = time.perf_counter()
                gr(on, inputs(px, px))
                torch.cuda.synchronize()
                warm[f"{px}{'+lora' if on else ''}"] = round(time.perf_counter() - t1, 1)
        set_lora(layers, False)
        emit(section=name, what="warm-up compile+capture", s=round(time.perf_counter() - t, 1), per_run=warm,
             unique_graphs=compiles())
        base = timed(lambda: gr(False, kw), 10)
        set_lora(layers, True)
        lora = timed(lambda: gr(True, kw), 10)
        set_lora(layers, False)
        again = gr(False, kw).float()
        emit(section=name, what="compiled+graph, 1024", base_ms_step=round(base, 1), lora_ms_step=round(lora, 1),
             lora_over_base=round(lora / base, 3), eager_over_compiled=round(eager / base, 2))
        base_before = gr(False, kw).clone()
        before = compiles()
        sizes = [(768, 768), (1280, 768), (768, 1280), (1536, 1024), (1024, 640), (640, 640), (256, 256), (1536, 1536)]
        times = {}
        for w, h in sizes:
            for on in (False, True):
                set_lora(layers, on)
                t1 = time.perf_counter()
                gr(on, inputs(w, h))
                torch.cuda.synchronize()
                times[f"{w}x{h}{'+lora' if on else ''}"] = round(time.perf_counter() - t1, 2)
        set_lora(layers, False)
        emit(section=name, what="unseen sizes after warm-up", compiles_after_warmup=compiles() - before, first_call_s=times,
             base_bitwise_after_lora=torch.equal(gr(False, kw), base_before))
        def recompile(**kw_compile):
            torch._dynamo.reset()
            for b in list(tr.transformer_blocks) + list(tr.single_transformer_blocks):
                b._compiled_call_impl = None
            tr.compile_repeated_blocks(fullgraph=True, **kw_compile)

        try:  # the same compiled static (specialised to 1024): what dynamic=True costs
            recompile(dynamic=False)
            trs = Graphs(tr)
            trs(False, kw)
            c = timed(lambda: trs(False, kw), 10)
            emit(section=name, what="static compile (dynamic=False), compiled+graph", ms_step=round(c, 1),
                 dynamic_over_static=round(base / c, 3))
            del trs
        except Exception as ex:
            traceback.print_exc()
            emit(section=name, what="static", error=str(ex)[:300])
        # attention: cuDNN through diffusers' dispatcher (a new compile: measured, not counted)
        try:
            tr.set_attention_backend("_native_cudnn")
            recompile(dynamic=True)
            tr2 = Graphs(tr)
            t1 = time.perf_counter()
            tr2(False, kw)
            cms = time.perf_counter() - t1
            c = timed(lambda: tr2(False, kw), 10)
            diff = (tr2(False, kw).float() - again)
            emit(section=name, what="attention backend _native_cudnn, compiled+graph", ms_step=round(c, 1),
                 vs_default=round(c / base, 3), compile_s=round(cms, 1),
                 max_abs_diff=diff.abs().max().item(), rel_rms=(diff.pow(2).mean().sqrt() / again.pow(2).mean().sqrt()).item())
            tr.reset_attention_backend()
        except Exception as ex:
            traceback.print_exc()
            emit(section=name, what="_native_cudnn", error=str(ex)[:300])
        if fp8:
            try:
                import torch._inductor.config as ic

                recompile(dynamic=True, mode="max-autotune-no-cudagraphs")
                tr3 = Graphs(tr)
                t1 = time.perf_counter()
                tr3(False, kw)
                cms = time.perf_counter() - t1
                c = timed(lambda: tr3(False, kw), 10)
                emit(section=name, what="max-autotune-no-cudagraphs, compiled+graph", ms_step=round(c, 1),
                     vs_default=round(c / base, 3), compile_s=round(cms, 1))
            except Exception as ex:
                traceback.print_exc()
                emit(section=name, what="max-autotune", error=str(ex)[:300])
    del tr, gr, layers
    import gc; gc.collect()
    torch._dynamo.reset()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    emit(section="env", gpu=torch.cuda.get_device_name(), torch=torch.__version__)
    parts = sys.argv[1:] or ["A", "bf16", "fp8"]
    if "A" in parts:
        section("A", attention)
    if "bf16" in parts:
        section("bf16", lambda: transformer(False))
    if "fp8" in parts:
        section("fp8", lambda: transformer(True))
    emit(section="done")
