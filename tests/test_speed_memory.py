"""The speed and memory settings (issue 5): compile=auto, cuda_graphs, memory_mode=low.

CUDA graphs and the 4-bit T5 need a GPU: here their selection and the status they report are checked
with stand-in GPUs (named as such); the GPU runs (docs/gpu/2026-11-27-graphs-check/, the benchmark's LoRA
check) check the rest. memory_mode=low runs for real on the CPU: the text encoders' separate path must give the same image every time and
the same image as the default path up to 512 px; above it the VAE decodes in tiles: close, not equal.
"""

import base64
import io

import numpy as np
import pytest
from conftest import InProcess, gen
from PIL import Image
from test_backends import NONE, REAL, pk, select_backend

from flux_api.app import create_app
from flux_api.bench import parse_target
from flux_api.engine.backends import Packages
from flux_api.engine.devices import GPU, Hardware
from flux_api.engine.services import BF16FluxModelManager, FP4FluxModelManager
from flux_api.engine.speed import SpeedPolicy, has_choices_seam
from flux_api.engine.status import precision
from flux_api.settings import BF16Settings, FP4Settings

GiB = 2**30
H100 = Hardware((GPU(0, "H100 (stand-in)", (9, 0), 80 * GiB),))


def _planned(manager):
    manager.preflight()
    return manager


def test_compile_auto_compiles_bf16_and_fp8_on_a_gpu_and_never_on_the_cpu(cache_dir):
    fp8 = _planned(FP4FluxModelManager(FP4Settings(model="tiny", cache_dir=cache_dir), H100, pk(NONE)))
    assert fp8.backend.name == "torchao-fp8" and fp8.speed.compile_mode == "regional"
    bnb = _planned(FP4FluxModelManager(FP4Settings(model="tiny", cache_dir=cache_dir, backend="bnb-fp4"), H100, pk(NONE)))
    assert bnb.speed.compile_mode == "none" and bnb.backend.fullgraph is False  # not measured compiled: left off
    bf16 = _planned(BF16FluxModelManager(BF16Settings(model="tiny", cache_dir=cache_dir), H100))
    assert bf16.speed.compile_mode == "regional" and bf16.speed.graphs_off_reason is None
    cpu = _planned(FP4FluxModelManager(FP4Settings(model="tiny", cache_dir=cache_dir, device="cpu"), H100, pk(NONE)))
    assert cpu.speed.compile_mode == "none" and cpu.speed.graphs_off_reason == "no CUDA device"
    forced = _planned(BF16FluxModelManager(BF16Settings(model="tiny", cache_dir=cache_dir, compile="regional"), H100))
    assert forced.speed.compile_mode == "regional"


def test_cuda_graphs_off_reasons(cache_dir):
    def reason(**kw):
        return _planned(BF16FluxModelManager(BF16Settings(model="tiny", cache_dir=cache_dir, **kw), H100)).speed.graphs_off_reason

    assert reason(cuda_graphs=False) == "cuda_graphs=false"
    assert "memory_mode=low" in reason(memory_mode="low")


def test_attention_kernel_choice(cache_dir):
    def attention(hw=H100, manager=BF16FluxModelManager, settings=BF16Settings, packages=None, **kw):
        extra = (packages,) if packages is not None else ()
        return _planned(manager(settings(model="tiny", cache_dir=cache_dir, **kw), hw, *extra)).speed.attention

    # auto: PyTorch's choice (on an H100 with torch 2.11 it is cuDNN already; forcing it measured the same)
    assert attention()[0] == "sdpa" and "PyTorch's own choice" in attention()[1]
    a100 = Hardware((GPU(0, "A100 (stand-in)", (8, 0), 80 * GiB),))
    assert attention(a100, attention="cudnn") == ("cudnn", "as configured")
    assert attention(Hardware())[0] == "sdpa" and attention(attention="sdpa") == ("sdpa", "as configured")
    assert attention(manager=FP4FluxModelManager, settings=FP4Settings, packages=pk(NONE), attention="cudnn")[0] == "cudnn"
    own = attention(a100, FP4FluxModelManager, FP4Settings, pk(REAL), attention="cudnn")
    assert own == ("own", "backend nunchaku runs its own attention kernels")
    t4 = Hardware((GPU(0, "T4 (stand-in)", (7, 5), 16 * GiB),))
    with pytest.raises(ValueError, match=r"attention=cudnn needs an sm_80\+ GPU, not T4 \(stand-in\) \(sm_75\)"):
        attention(t4, attention="cudnn")
    with pytest.raises(ValueError, match="attention=cudnn needs a CUDA GPU"):
        attention(Hardware(), attention="cudnn")  # device auto, no GPU: start-up stops, saying why
    with pytest.raises(ValueError, match="attention=cudnn needs a CUDA GPU"):
        BF16Settings(model="tiny", device="cpu", attention="cudnn")
    assert parse_target("fp4+sdpa") == ("fp4", None, {"ATTENTION": "sdpa"})


class _FakeFeatures:
    """A fake of inductor's SIMDKernelFeatures (what its heuristics read of a kernel to be generated): the two
    things persistent_row_choices reads. Inductor makes them only while generating GPU kernels."""

    def __init__(self, width, hint):
        self.reduction_numel, self.hint = width, hint

    def get_reduction_hint(self):
        return self.hint


def test_compile_persistent_rows_makes_inductor_keep_flux_rows_in_registers(tiny_dir, cache_dir, monkeypatch):
    import sympy
    import torch._inductor.config as inductor
    from diffusers import FluxTransformer2DModel
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint

    from flux_api.engine.speed import compile_blocks

    # Saved and restored by hand: pytest's monkeypatch deletes a torch config key on undo.
    before = inductor.inductor_choices_class
    try:
        inductor.inductor_choices_class = None
        compile_blocks(FluxTransformer2DModel.from_pretrained(tiny_dir / "transformer"), cache_dir, True, persistent_rows=True)
        choices = inductor.inductor_choices_class()
        assert isinstance(choices, InductorChoices) and choices.uuid() == "flux_api.persistent_rows.4096"
        for width in (3072, sympy.Integer(3072), 4096, 1024):  # FLUX's rows, and what inductor already keeps
            assert choices.should_use_persistent_reduction(_FakeFeatures(width, ReductionHint.INNER), False) is True
        # Wider rows, other shapes of reduction, cooperative ones, symbolic widths: inductor's own call
        monkeypatch.setattr(InductorChoices, "should_use_persistent_reduction", staticmethod(lambda f, c: "inductor's"))
        for features, cooperative in ((_FakeFeatures(8192, ReductionHint.INNER), False),
                                      (_FakeFeatures(3072, ReductionHint.OUTER), False),
                                      (_FakeFeatures(3072, ReductionHint.INNER), True),
                                      (_FakeFeatures(sympy.Symbol("s0"), ReductionHint.INNER), False)):
            assert choices.should_use_persistent_reduction(features, cooperative) == "inductor's"
        compile_blocks(FluxTransformer2DModel.from_pretrained(tiny_dir / "transformer"), cache_dir, True)
        assert inductor.inductor_choices_class is None  # off again: the setting, not what came before
    finally:
        inductor.inductor_choices_class = before
    assert parse_target("fp4+rows") == ("fp4", None, {"COMPILE_PERSISTENT_ROWS": "true"})
    # FP4's defaults off again, for the defaults before and each lever's share
    assert parse_target("fp4+norows+noqkv+nomod+nogn")[2] == {"COMPILE_PERSISTENT_ROWS": "false", "FUSE_QKV": "false",
                                                             "PRECOMPUTE_MODULATION": "false", "SPLIT_GROUP_NORM": "false"}
    with pytest.raises(ValueError, match="twice"):
        parse_target("fp4+rows+norows")
    # A torch without the seam: start-up stops before any weight loads, saying why (compiled only: else moot)
    import flux_api.engine.speed as speed

    monkeypatch.setattr(speed, "has_choices_seam", lambda: False)
    planned = lambda **kw: _planned(BF16FluxModelManager(BF16Settings(model="tiny", cache_dir=cache_dir,
                                                                      compile_persistent_rows=True, **kw), H100))
    with pytest.raises(ValueError, match="compile_persistent_rows needs inductor's choices seam"):
        planned(compile="regional")
    assert planned(compile="none").speed.compile_mode == "none"
    # The FP4 service's default on (not asked for) is left off there instead: the service starts
    fp4 = _planned(FP4FluxModelManager(FP4Settings(model="tiny", cache_dir=cache_dir, compile="regional"), H100, pk(NONE)))
    assert fp4.settings.compile_persistent_rows and not fp4.speed.persistent_rows


@pytest.mark.parametrize("manager, settings, packages", [(FP4FluxModelManager, FP4Settings, (pk(NONE),)),
                                                         (BF16FluxModelManager, BF16Settings, ())], ids=["fp4", "bf16"])
def test_both_services_turn_issue_25s_levers_on_where_they_were_measured(cache_dir, manager, settings, packages):
    """On a GPU, both services' defaults switch on the four levers and the fused kernels, measured on an H100
    (2026-12-07: FP4 47.1 dB from its defaults before; BF16 with its fused kernels and three of the four 0.738x ->
    0.697x stock, 47.96 dB from its defaults before); precompute_modulation's auto is off on the CPU (the tiny
    model's bytes) and with placement=parallel (not run there)."""
    gpu = _planned(manager(settings(model="tiny", cache_dir=cache_dir), H100, *packages))
    s = gpu.settings
    assert s.fuse_qkv and s.split_group_norm and s.compile_persistent_rows and s.precompute_modulation == "auto"
    assert s.fuse_kernels and not (s.compile_vae or s.compile_text_encoder or s.fuse_rope)  # ready / slower: off
    assert gpu.speed.precomputes_modulation and gpu.speed.persistent_rows == has_choices_seam()
    cpu = _planned(manager(settings(model="tiny", cache_dir=cache_dir, device="cpu"), H100, *packages))
    assert not cpu.speed.precomputes_modulation and not cpu.speed.persistent_rows
    two = Hardware(H100.gpus + (GPU(1, "H100 (stand-in)", (9, 0), 80 * GiB),))
    parallel = _planned(manager(settings(model="tiny", cache_dir=cache_dir, placement="parallel"), two, *packages))
    assert parallel.plan.mode == "parallel" and not parallel.speed.precomputes_modulation
    asked = _planned(manager(settings(model="tiny", cache_dir=cache_dir, device="cpu", precompute_modulation=True),
                             H100, *packages))
    assert asked.speed.precomputes_modulation  # asked for: on the CPU too (the tests of modulation.py)


def test_compile_autotune_turns_on_inductors_tuning_for_the_blocks(tiny_dir, cache_dir):
    import torch._inductor.config as inductor
    from diffusers import FluxTransformer2DModel

    from flux_api.engine.speed import compile_blocks

    before = inductor.coordinate_descent_tuning
    try:
        compile_blocks(FluxTransformer2DModel.from_pretrained(tiny_dir / "transformer"), cache_dir, True, autotune=True)
        assert inductor.coordinate_descent_tuning is True
        compile_blocks(FluxTransformer2DModel.from_pretrained(tiny_dir / "transformer"), cache_dir, True)
        assert inductor.coordinate_descent_tuning is False  # off again: the setting, not what came before
    finally:
        inductor.coordinate_descent_tuning = before
    assert parse_target("fp4+autotune") == ("fp4", None, {"COMPILE_AUTOTUNE": "true"})


def test_low_memory_picks_a_4bit_backend_and_4bit_t5_on_a_gpu(cache_dir):
    assert select_backend("auto", H100, pk(NONE)).name == "torchao-fp8"
    low = select_backend("auto", H100, pk(NONE), low_memory=True)
    assert low.name == "bnb-fp4" and "memory_mode=low" in low.reason
    m = _planned(FP4FluxModelManager(FP4Settings(model="tiny", cache_dir=cache_dir, memory_mode="low"), H100, pk(NONE)))
    assert m.speed.text_encoders == "nf4" and "nf4" in precision(m)["text_encoders"]
    # (the quantization config itself needs bitsandbytes installed, which this machine has not)
    no_bnb = _planned(FP4FluxModelManager(FP4Settings(model="tiny", cache_dir=cache_dir, memory_mode="low",
                                                      backend="torchao-fp8"), H100, Packages(NONE, False, True)))
    assert no_bnb.speed.text_encoders == "cpu"  # no bitsandbytes: the text encoders go to the CPU instead


def test_bench_target_options():
    assert parse_target("fp4:bnb-fp4+compile+low") == ("fp4", "bnb-fp4", {"COMPILE": "regional", "MEMORY_MODE": "low"})
    assert parse_target("bf16") == ("bf16", None, {})
    with pytest.raises(ValueError, match="unknown target option"):
        parse_target("bf16+turbo")
    # stock diffusers' peers (issue 25): what a user builds in a few lines, not the services' settings
    assert parse_target("stock") == ("stock", None, {})
    kind, backend, opts = parse_target("stock+fp8")
    assert (kind, backend, sorted(opts)) == ("stock", None, ["fp8"]) and "torchao" in opts["fp8"]
    for bad in ("stock+low", "stock:torchao-fp8", "stock+regional"):
        with pytest.raises(ValueError, match="stock takes"):
            parse_target(bad)


def _pixels(b64: str):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.float64)


@pytest.mark.slow  # two services loaded, about 12 s each
@pytest.mark.parametrize("kind", ["bf16", "fp4"])
def test_low_memory_mode_serves_the_same_images(kind, cache_dir, lora_dir):
    cls = BF16Settings if kind == "bf16" else FP4Settings
    body = dict(prompt="a red fox in the snow", seed=11, width=256, height=256, num_inference_steps=3)
    big = {**body, "width": 768, "height": 768, "num_inference_steps": 2}
    images = {}
    for mode in ("default", "low"):
        with InProcess(create_app(cls(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir, memory_mode=mode))) as s:
            s.wait_ready()
            st = s.client.get("/model-status").json()
            assert st["memory"]["mode"] == mode and st["cuda_graphs"]["on"] is False
            if mode == "low":
                assert "CPU" in st["memory"]["text_encoders"]
            first, again = gen(s, **body), gen(s, **body)
            assert first.status_code == 200, first.text
            assert first.json()["image"] == again.json()["image"]
            neg = gen(s, **body, negative_prompt="blurry")
            assert neg.status_code == 200 and neg.json()["image"] != first.json()["image"]
            images[mode] = (first.json()["image"], neg.json()["image"])
            large = gen(s, **big)
            assert large.status_code == 200, large.text
            images[mode + "-768"] = _pixels(large.json()["image"])
    assert images["low"] == images["default"]
    diff = np.abs(images["low-768"] - images["default-768"])
    assert diff.max() > 0 and diff.mean() < 12  # tiled above 512 px: blended seams, same picture (another image: ~50+)


@pytest.mark.slow  # two services loaded, about 7 s
def test_prompt_cache_skips_the_text_encoders_and_changes_no_byte(cache_dir, lora_dir):
    # Issue 25: a request of n images, a retry or a new seed encodes its prompt once.
    body = dict(prompt="a blue square at the top", seed=5, width=256, height=256, num_inference_steps=2)
    answers, stats = {}, {}
    for size in (0, 2):
        with InProcess(create_app(BF16Settings(model="tiny", cache_dir=cache_dir, lora_dir=lora_dir,
                                               prompt_cache_size=size))) as s:
            s.wait_ready()
            cache = lambda: s.client.get("/model-status").json()["placement"]["replica_status"][0]["prompt_cache"]  # noqa: E731
            before = cache()
            three = s.client.post("/generate", json={**body, "num_images": 3})
            neg = gen(s, **body, negative_prompt="red")
            again = gen(s, **{**body, "seed": 6})
            # three new prompts (2 entries: the least recently used go), then a used one is kept over an older one
            for p in ("a red dot", "a green dot", "a blue dot", "a green dot", "a yellow dot", "a green dot"):
                assert gen(s, **{**body, "prompt": p}).status_code == 200
            assert all(r.status_code == 200 for r in (three, neg, again)), three.text
            answers[size] = [three.json()["images"], neg.json()["image"], again.json()["image"]]
            after = cache()
            stats[size] = {k: after[k] - before[k] for k in ("hits", "misses")} | {"entries": after["entries"]}
    assert answers[0] == answers[2]
    # 3 images: 1 miss + 2 hits; the negative prompt's request: a hit and a miss ("red"); the new seed: a
    # hit; three new prompts: 3 misses; green again: a hit (blue is now the least recently used); yellow:
    # a miss that drops blue; green: a hit (first in, first out would have dropped green). Off: all encoded.
    assert stats[2] == {"hits": 6, "misses": 6, "entries": 2}
    assert stats[0] == {"hits": 0, "misses": 12, "entries": 0}


@pytest.mark.slow  # compiles the tiny VAE's decoder, T5's blocks and the transformer's on 2 cores: about 50 s
def test_compile_vae_and_text_encoder_compile_at_warm_up_and_never_on_a_request(cache_dir, bf16):
    from conftest import BF16_DEFAULTS, pixels

    settings = BF16Settings(model="tiny", cache_dir=cache_dir, compile="regional", compile_vae=True,
                            compile_text_encoder=True, warmup_sizes=[256], **BF16_DEFAULTS)
    with InProcess(create_app(settings)) as s:
        s.wait_ready(timeout=600)
        status = s.client.get("/model-status").json()["compile"]
        assert status["vae"] is True and status["text_encoder"] is True and status["graphs_compiled_at_load"] > 0
        pipe = s.app.state.engine.manager.replicas[0].pipe
        assert "forward" in vars(pipe.vae.decoder)  # its own forward, compiled, over the class's
        assert all("forward" in vars(block) for block in pipe.text_encoder_2.encoder.block)
        got = np.frombuffer(pixels(gen(s)), np.uint8).astype(float)
        # a new prompt runs the compiled T5 (the warm-up's prompt is cached), a new size the compiled decoder
        assert pixels(gen(s, prompt="a new prompt", width=320, height=256))
        assert s.client.get("/model-status").json()["compile"]["compiles_after_warmup"] == 0
        manager = s.app.state.engine.manager  # memory_mode=low keeps T5 eager (on the CPU or in nf4)
        low = settings.model_copy(update={"memory_mode": "low"})
        assert not SpeedPolicy(low, manager.backend, manager.plan).compiles_text_encoder
    want = np.frombuffer(pixels(gen(bf16)), np.uint8).astype(float)
    assert np.abs(got - want).mean() < 1.0  # the eager service's image, up to the compiled kernels' rounding
    assert parse_target("bf16+vae+t5") == ("bf16", None, {"COMPILE_VAE": "true", "COMPILE_TEXT_ENCODER": "true"})
