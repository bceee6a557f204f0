"""A request's AdaLN modulations precomputed at its first step (engine/modulation.py, `precompute_modulation`),
on the CPU: through a real service the images are what diffusers' per-step path draws (text, true CFG,
image-to-image, LoRAs, First Block Cache; the FP4 service's int8 norms too), the table is made once a prompt
and only inside a pipeline call, a pass whose timestep is not the scheduler's fails loudly, norms whose weights
are packed are left alone, and compiled blocks still share their graphs."""

import contextlib

import numpy as np
import pytest
import torch
from conftest import BF16_DEFAULTS, FP4_DEFAULTS, InProcess, gen, pixels

from flux_api.app import create_app
from flux_api.engine.modulation import ModulationTable
from flux_api.settings import BF16Settings, FP4Settings


def _levels_apart(a, b) -> int:
    return int(np.abs(np.frombuffer(pixels(a), np.uint8).astype(int) - np.frombuffer(pixels(b), np.uint8)).max())


def _png(resp) -> str:
    assert resp.status_code == 200, resp.text
    return resp.json()["image"]


@pytest.fixture(scope="module")
def precomputed(cache_dir, lora_dir):
    settings = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, precompute_modulation=True,
                            **BF16_DEFAULTS)
    with InProcess(create_app(settings)) as s:
        yield s.wait_ready()


def test_a_service_with_precomputed_modulations_draws_what_diffusers_draws(precomputed, bf16):
    status = precomputed.client.get("/model-status").json()["compile"]
    assert status["modulation_precomputed"] == 2 * 2 + 2 + 1  # the tiny model: 2 double blocks, 2 single, norm_out
    assert bf16.client.get("/model-status").json()["compile"]["modulation_precomputed"] is None
    cases = [dict(), dict(num_inference_steps=4, seed=3, prompt="a cat"),
             dict(negative_prompt="blurry", true_cfg_scale=2.0),  # two prompts a step: two tables
             dict(loras=[{"name": "style"}]), dict(loras=[{"name": "green", "weight": 0.8}, {"name": "detail"}]),
             dict(num_inference_steps=4, first_block_cache=0.3)]
    for body in cases:
        got, want = gen(precomputed, **body), gen(bf16, **body)
        assert _levels_apart(got, want) <= 1, body  # a GEMM of the steps' rows may round unlike one row's
    init = _png(gen(bf16, seed=9))
    for body in (dict(image=init, strength=0.6, num_inference_steps=4),  # starts at the scheduler's 2nd step
                 dict(image=init, strength=0.6, num_inference_steps=4, negative_prompt="dark", true_cfg_scale=1.5)):
        got, want = precomputed.client.post("/generate", json={"prompt": "a boat", "seed": 2, **body}), \
            bf16.client.post("/generate", json={"prompt": "a boat", "seed": 2, **body})
        assert _levels_apart(got, want) <= 1, body
    assert pixels(gen(precomputed, seed=5)) == pixels(gen(precomputed, seed=5))  # the same seed, the same bytes


def _tiny_pipe(tiny_dir):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)


def _call(pipe, steps=3, **kw):
    return pipe("a red bicycle", num_inference_steps=steps, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0), **kw).images


def test_the_table_is_made_once_a_prompt_inside_a_call_and_matches_the_per_step_path(tiny_dir):
    pipe = _tiny_pipe(tiny_dir)
    want = _call(pipe, 4)
    table = ModulationTable(pipe.transformer, pipe.scheduler).install()
    made = []
    rows = table._rows
    table._rows = lambda *a: (made.append(a[1].shape[0]), rows(*a))[1]
    with pytest.raises(RuntimeError, match="outside ModulationTable.run"):
        _call(pipe)  # no table can be trusted outside a call: the address of a pooled prompt is reused
    with table.run():
        got = _call(pipe, 4)
    assert made == [4]  # one table of the 4 steps, made at the first pass
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not table.runs and not table.active  # dropped after the call
    made.clear()
    with table.run():
        _call(pipe, 3, negative_prompt="blurry", true_cfg_scale=2.0)
    assert made == [3, 3]  # the prompt's and the negative prompt's


def test_a_pass_whose_timestep_is_not_the_schedulers_fails_loudly(tiny_dir):
    pipe = _tiny_pipe(tiny_dir)
    table = ModulationTable(pipe.transformer, pipe.scheduler).install()
    inner = pipe.transformer.forward
    calls = []

    def shifted(*args, **kwargs):  # a pipeline that passes another timestep from its second pass on
        calls.append(1)
        if len(calls) > 1:
            kwargs["timestep"] = kwargs["timestep"] * 0.5
        return inner(*args, **kwargs)

    pipe.transformer.forward = shifted
    with pytest.raises(RuntimeError, match="not the scheduler's for its step"):
        with table.run():
            _call(pipe)


def test_a_first_pass_that_is_not_the_schedulers_gets_its_own_row(tiny_dir):
    def halving(forward):  # a pipeline whose every pass has a timestep that is none of the scheduler's
        def halved(*args, **kwargs):
            kwargs["timestep"] = kwargs["timestep"] * 0.5
            return forward(*args, **kwargs)
        return halved

    pipe = _tiny_pipe(tiny_dir)
    want = _call(pipe, sigmas=[1.0, 0.6, 0.3])  # another schedule: still the scheduler's
    plain = pipe.transformer.forward
    pipe.transformer.forward = halving(plain)
    want_halved = _call(pipe)
    pipe.transformer.forward = plain
    table = ModulationTable(pipe.transformer, pipe.scheduler).install()
    with table.run():
        np.testing.assert_allclose(_call(pipe, sigmas=[1.0, 0.6, 0.3]), want, atol=1e-5)
    pipe.transformer.forward = halving(pipe.transformer.forward)  # halved before the table reads it
    with table.run():  # each pass gets its own row, as diffusers computes it
        np.testing.assert_allclose(_call(pipe), want_halved, atol=1e-5)


def test_compiled_blocks_read_the_buffer_and_share_their_graphs(tiny_dir, tmp_path):
    from torch._dynamo.utils import counters

    from flux_api.engine.speed import compile_blocks

    graphs, images = [], []
    for precompute in (False, True):
        pipe = _tiny_pipe(tiny_dir)
        table = ModulationTable(pipe.transformer, pipe.scheduler).install() if precompute else None
        torch._dynamo.reset()
        counters.clear()
        compile_blocks(pipe.transformer, tmp_path, fullgraph=True)
        out = []
        for n in (2, 3):
            with table.run() if table else contextlib.nullcontext():
                out.append(_call(pipe, n))
        graphs.append(counters["stats"]["unique_graphs"])
        images.append(out)
    # as many graphs as diffusers' blocks make (each class's first block compiles its own variant), read
    # by every block at every step: the buffer is an input like a weight, not a constant of one block's graph
    assert graphs[1] == graphs[0] <= 4
    for got, want in zip(*images[::-1]):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_norms_whose_weights_are_stored_packed_are_left_as_they_are(tiny_dir):
    pipe = _tiny_pipe(tiny_dir)
    want = _call(pipe)
    norm = pipe.transformer.transformer_blocks[0].norm1.linear
    real = norm.weight
    # bitsandbytes' 4-bit layout (a fake of it): uint8, two values a byte, one column; the layer's output is unsaid
    norm.weight = torch.nn.Parameter(torch.zeros(real.numel() // 2, 1, dtype=torch.uint8), requires_grad=False)
    table = ModulationTable(pipe.transformer, pipe.scheduler)
    assert table.norms == 0 and "uint8" in table.problem
    norm.weight = real
    assert not any(hasattr(m, "modulation") for m in pipe.transformer.modules())  # nothing was patched
    np.testing.assert_array_equal(_call(pipe), want)


@pytest.mark.slow
def test_the_fp4_services_quantized_norms_are_precomputed_too(cache_dir, lora_dir, fp4):

    settings = FP4Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, precompute_modulation=True,
                           **FP4_DEFAULTS)
    with InProcess(create_app(settings)) as s:
        s.wait_ready()
        assert s.client.get("/model-status").json()["compile"]["modulation_precomputed"] == 7  # int8 weights too
        for body in (dict(), dict(loras=[{"name": "style"}]), dict(negative_prompt="blurry", true_cfg_scale=2.0)):
            assert _levels_apart(gen(s, **body), gen(fp4, **body)) <= 1, body


@pytest.mark.slow
def test_the_fp4_services_defaults_keep_the_cpu_tiny_models_bytes(cache_dir, lora_dir, fp4):
    """FP4's defaults since 2026-12-07 (compile_persistent_rows, fuse_qkv, split_group_norm on, precompute_modulation
    auto) change nothing on the CPU: the tiny model's images are the bytes of the four switched off (issue 25:
    byte-identical on the CPU tiny model), and none of the four did anything there."""
    before = FP4Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, compile_persistent_rows=False,
                         fuse_qkv=False, precompute_modulation=False, split_group_norm=False, **FP4_DEFAULTS)
    assert fp4.client.get("/model-status").json()["compile"]["qkv_fused"] == 0  # int8 weights are not stacked
    status = fp4.client.get("/model-status").json()["compile"]
    assert status["modulation_precomputed"] is None and status["split_group_norms"] is None and not status["persistent_rows"]
    with InProcess(create_app(before)) as s:
        s.wait_ready()
        for body in (dict(), dict(loras=[{"name": "style"}]), dict(negative_prompt="blurry", true_cfg_scale=2.0)):
            assert pixels(gen(s, **body)) == pixels(gen(fp4, **body)), body


@pytest.mark.slow
def test_the_bf16_services_defaults_keep_the_cpu_tiny_models_bytes(cache_dir, lora_dir, bf16):
    """BF16's defaults since 2026-12-07 (sixth session: the fused kernels and the four levers on, as on FP4) change
    nothing on the CPU: the tiny model's images are the bytes of all five switched off (issue 25: byte-identical
    on the CPU tiny model). fuse_qkv is the one that acts there (bf16 weights stack exactly)."""
    before = BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, fuse_kernels=False,
                          compile_persistent_rows=False, fuse_qkv=False, precompute_modulation=False,
                          split_group_norm=False, **BF16_DEFAULTS)
    status = bf16.client.get("/model-status").json()["compile"]
    assert status["qkv_fused"] > 0 and status["modulation_precomputed"] is None
    with InProcess(create_app(before)) as s:
        s.wait_ready()
        assert not s.client.get("/model-status").json()["compile"]["qkv_fused"]
        for body in (dict(), dict(loras=[{"name": "style"}]), dict(negative_prompt="blurry", true_cfg_scale=2.0)):
            assert pixels(gen(s, **body)) == pixels(gen(bf16, **body)), body
