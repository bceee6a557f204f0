"""First Block Cache per request (`first_block_cache`, flux_api/engine/step_cache.py), on both services and
on the compiled service: it skips steps and says how many, the same request gives the same bytes, it
never leaks into a request without it, image i of several is still the request alone with its seed, bad
values are a 422, and the `fast` preset (OpenAI's `quality: low`) turns it on. What it costs in adherence
is in test_meaning.py and docs/QUALITY.md."""

import base64
import io
import json

import pytest
from PIL import Image

from conftest import gen, pixels, wait_state

# 8 steps at a threshold this high: the tiny model's later steps change little, so some are skipped
FBC = {"num_inference_steps": 8, "first_block_cache": 0.5}


def test_a_cached_request_skips_steps_gives_the_same_bytes_and_never_leaks(svc):
    base = gen(svc, num_inference_steps=8)
    assert base.json()["first_block_cache"] is None and base.json()["steps_skipped"] is None
    cached = gen(svc, **FBC)
    body = cached.json()
    assert body["first_block_cache"] == 0.5 and 0 < body["steps_skipped"] < 8, body["steps_skipped"]
    assert pixels(cached) != pixels(base)  # steps were skipped: another image
    again = gen(svc, **FBC)
    assert again.json()["image"] == body["image"]  # same seed and parameters, same bytes (the PNG too)
    assert gen(svc, num_inference_steps=8).json()["image"] == base.json()["image"]  # nothing left behind
    meta = json.loads(Image.open(io.BytesIO(base64.b64decode(body["image"]))).text["parameters"])
    assert meta["first_block_cache"] == 0.5
    plain_meta = json.loads(Image.open(io.BytesIO(base64.b64decode(base.json()["image"]))).text["parameters"])
    assert "first_block_cache" not in plain_meta  # an image without it keeps the metadata it had


def test_a_low_threshold_skips_nothing_and_draws_the_base_image(bf16):
    # at a threshold no step's change is under, every step runs in full: the base image, bitwise
    r = gen(bf16, num_inference_steps=8, first_block_cache=1e-9)
    assert r.json()["steps_skipped"] == 0
    assert pixels(r) == pixels(gen(bf16, num_inference_steps=8))


@pytest.mark.slow  # about 1.5 s: four images of 8 steps
def test_each_image_of_several_starts_a_fresh_cache(bf16):
    both = gen(bf16, num_images=2, seed=7, **FBC).json()
    first, second = gen(bf16, seed=7, **FBC).json(), gen(bf16, seed=8, **FBC).json()
    assert both["images"] == [first["image"], second["image"]]  # image i of 2 is the request alone with seed + i
    assert both["steps_skipped"] == first["steps_skipped"] + second["steps_skipped"] > 0  # counted over both


def test_with_a_negative_prompt_and_a_lora(bf16):
    r = gen(bf16, negative_prompt="blurry", lora_name="style", **FBC)
    assert r.status_code == 200, r.text
    assert r.json()["steps_skipped"] > 0 and r.json()["loras"] == [{"name": "style", "weight": 1.0}]


def test_raw_bytes_say_the_steps_skipped_in_a_header(bf16):
    r = bf16.client.post("/generate", headers={"Accept": "image/png"},
                         json={"prompt": "a red bicycle on a bridge", "width": 256, "height": 256, "seed": 1, **FBC})
    assert r.status_code == 200 and int(r.headers["X-Steps-Skipped"]) > 0
    plain = bf16.client.post("/generate", headers={"Accept": "image/png"}, json={"prompt": "a cat", "width": 256,
                                                                                   "height": 256, "seed": 1,
                                                                                   "num_inference_steps": 2})
    assert "X-Steps-Skipped" not in plain.headers


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.5, "0.2", True])
def test_a_threshold_outside_0_to_1_is_a_422_naming_the_field(bf16, value):
    r = bf16.client.post("/generate", json={"prompt": "a cat", "first_block_cache": value})
    assert r.status_code == 422, r.text
    assert "first_block_cache" in r.text


@pytest.mark.slow  # about 2 s: three requests of the preset's 12 steps
def test_the_fast_preset_and_openai_quality_low_turn_it_on(bf16):
    fast = bf16.client.get("/presets").json()["presets"]["fast"]["fields"]
    threshold = fast["first_block_cache"]
    assert 0 < threshold <= 1
    r = gen(bf16, prompt="a cat", seed=3, preset="fast", num_inference_steps=None)
    assert r.json()["first_block_cache"] == threshold
    assert r.json()["num_inference_steps"] == fast["num_inference_steps"]
    explicit = bf16.client.post("/generate", json={"prompt": "a cat", "width": 256, "height": 256, "preset": "fast",
                                                   "first_block_cache": None})
    assert explicit.json()["first_block_cache"] is None  # a field the request gives wins, null included
    v1 = bf16.client.post("/v1/images/generations", json={"prompt": "a cat", "size": "256x256", "quality": "low",
                                                          "seed": 3})
    assert v1.status_code == 200, v1.text
    got = Image.open(io.BytesIO(base64.b64decode(v1.json()["data"][0]["b64_json"]))).tobytes()
    assert got == pixels(r)  # quality low is the fast preset, cache included


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow  # about 4.5 s: eight requests, four of them with true CFG
def test_image_to_image_and_inpainting_with_and_without_a_negative_prompt(bf16):
    # diffusers' image-to-image and inpainting pipelines name no cache context: step_cache names each pass
    init = _png_b64(Image.new("RGB", (256, 256), (200, 40, 40)))
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    for extra in ({"image": init, "strength": 1.0}, {"image": init, "mask": _png_b64(mask)}):
        for negative in (None, "blurry"):
            body = dict(FBC, **extra, negative_prompt=negative)
            first, second = gen(bf16, **body), gen(bf16, **body)
            assert first.status_code == 200, first.text
            assert first.json()["steps_skipped"] > 0 and first.json()["image"] == second.json()["image"]


def test_passes_named_by_their_place_draw_what_the_pipelines_own_names_draw(bf16, monkeypatch):
    # Text-to-image names its passes itself ("cond", "uncond"); naming them by their place in the step, as
    # step_cache does for the pipelines that do not, gives the same image and the same skips, true CFG included.
    from flux_api.engine.replica import Replica
    from flux_api.engine.types import GenerationParams

    replica = bf16.app.state.engine.manager.replicas[0]
    params = GenerationParams(prompt="a red circle", negative_prompt="blue", true_cfg_scale=1.5, seed=1, width=256,
                              height=256, num_inference_steps=8, guidance_scale=3.5, first_block_cache=0.5)
    own_skips, named_skips = [], []
    own = replica.run(params, skips=own_skips)
    monkeypatch.setattr(replica, "cache_steps", lambda threshold, _: Replica.cache_steps(replica, threshold, 2))
    named = replica.run(params, skips=named_skips)
    assert own_skips[0].skipped > 0 and own_skips[0].skipped == named_skips[0].skipped
    assert own.tobytes() == named.tobytes()


def test_a_cuda_graph_capture_runs_the_forward_with_the_calls_own_arguments(monkeypatch):
    """GraphedForward's capture runs the transformer with the arguments the pipeline gave, not only its
    tensors: the compiled blocks guard on joint_attention_kwargs ({} from FluxPipeline, None when left out),
    and a capture that left it out compiled graphs the cached path (which runs outside the graph) could not
    use: 3 compiles on a live request on an H100 (docs/PERFORMANCE.md). Reproduced on the CPU with the tiny
    model. CUDA's stream and graph calls are stand-ins here (no GPU): what is checked is what the forward gets."""
    import contextlib

    import torch

    from flux_api.engine.graphs import GraphedForward

    seen = []

    class Transformer:
        def forward(self, return_dict=True, **kwargs):
            seen.append(kwargs)
            return (torch.zeros(1),)

    fake_cuda = {"Stream": lambda: type("S", (), {"wait_stream": lambda self, s: None})(),
                 "stream": lambda s: contextlib.nullcontext(), "graph": lambda g, pool=None: contextlib.nullcontext(),
                 "CUDAGraph": lambda: object(), "graph_pool_handle": lambda: None,
                 "current_stream": lambda: type("S", (), {"wait_stream": lambda self, s: None})()}
    for name, fake in fake_cuda.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    graphed = GraphedForward(Transformer())
    inputs = {"hidden_states": torch.ones(1, 4, 8)}
    assert graphed._capture(("base",), inputs, {"joint_attention_kwargs": {}}) is not None, graphed.failed
    assert len(seen) == 3 and all(call["joint_attention_kwargs"] == {} for call in seen)
    assert all(call["hidden_states"] is not inputs["hidden_states"] for call in seen)  # the graph's own copy


@pytest.mark.slow  # about 1.5 s
def test_a_cached_job_cancelled_mid_run_leaves_no_hook_behind(bf16):
    # image-to-image: the cache's hooks and step_cache's own pass-naming hooks, stopped at a step boundary
    base = gen(bf16, num_inference_steps=8)
    init = _png_b64(Image.new("RGB", (256, 256), (40, 40, 200)))
    job = bf16.client.post("/jobs", json={"prompt": "a lighthouse", "width": 256, "height": 256, "seed": 1,
                                          "num_inference_steps": 60, "image": init, "strength": 1.0,
                                          "negative_prompt": "blurry", "first_block_cache": 1e-9}).json()["id"]
    wait_state(bf16, job, {"running"})
    bf16.client.delete(f"/jobs/{job}")
    assert wait_state(bf16, job, {"cancelled", "done"})["state"] == "cancelled"
    replica = bf16.app.state.engine.manager.replicas[0]
    transformer = replica.pipe.transformer
    assert not replica.step_cache.active and not transformer.is_cache_enabled
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks
    assert gen(bf16, num_inference_steps=8).json()["image"] == base.json()["image"]


@pytest.mark.parametrize("service, hardware, settings, says", [
    ("fp4", "A100", {}, "backend nunchaku runs its transformer blocks in its own kernels"),  # auto picks nunchaku there
    ("bf16", "H100S", {"placement": "balanced"}, "placement=balanced spreads the blocks over GPUs"),
])
def test_where_it_cannot_run_a_preset_leaves_it_out_and_a_request_is_refused(cache_dir, service, hardware, settings,
                                                                            says):
    # stand-ins for the GPUs and Nunchaku (none here): what is checked is the decision before any weight loads
    from test_backends import A100, REAL, pk
    from test_parallel import H100S

    from flux_api.engine.services import BF16FluxModelManager, FP4FluxModelManager
    from flux_api.engine.types import GenerationParams
    from flux_api.errors import InvalidRequest
    from flux_api.settings import BF16Settings, FP4Settings

    hw = {"A100": A100, "H100S": H100S}[hardware]
    if service == "fp4":
        manager = FP4FluxModelManager(FP4Settings(model="tiny", cache_dir=cache_dir, **settings), hw, pk(REAL))
    else:
        manager = BF16FluxModelManager(BF16Settings(model="tiny", cache_dir=cache_dir, **settings), hw)
    manager.preflight()
    assert says in manager.step_cache_problem()
    fast = manager.settings.presets["fast"]
    assert fast.first_block_cache is None and fast.num_inference_steps == 12  # the preset's steps still apply
    manager.require_ready = lambda: None  # not loaded: the check's own rule is what is tested
    params = GenerationParams(prompt="a cat", seed=1, width=256, height=256, num_inference_steps=2, guidance_scale=3.5,
                              first_block_cache=0.2)
    with pytest.raises(InvalidRequest, match=says) as refused:
        manager.check(params)
    assert refused.value.details == {"field": "first_block_cache"}
    assert manager.check(GenerationParams(**{**params.__dict__, "first_block_cache": None})).params.first_block_cache is None
