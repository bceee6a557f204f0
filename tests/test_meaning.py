"""What the tiny model draws, read back from the pixels by the meaning checker (flux_api/meaning.py), on
both services: a prompt draws what it says, a negative prompt steers away, the trained "green" LoRA
recolours every object (and at weight 0, or once removed, the base image comes back byte for byte),
and the quantized backend keeps colour adherence within 5 points of BF16's.

The thresholds are what the shipped model does (docs/QUALITY.md has the full table), with a margin of
one image: colour, position, background and shape are asserted over the first 24 held-out prompts (the
model draws all their colours, positions and backgrounds right on both services, and 22 of their 24
shapes on BF16, 23 on FP4 int8; 95% of the 200 held-out prompts' shapes at these 8 steps). 24, not 8: at
95% a sample of 8 holds a miss or two often enough that a threshold on it either fails by chance or
asserts little.
"""

import base64
import io

import pytest
from PIL import Image

from conftest import gen
from flux_api.meaning import Reading, read_scene
from flux_api.tiny_train.grammar import COLOURS, eval_prompts, partial_prompts

STEPS = 8


def image(resp) -> Image.Image:
    assert resp.status_code == 200, resp.text
    return Image.open(io.BytesIO(base64.b64decode(resp.json()["image"])))


def reading(resp) -> Reading:
    return read_scene(image(resp))


def draw(svc, prompt: str, seed: int, **extra) -> Reading:
    return reading(gen(svc, prompt=prompt, seed=seed, num_inference_steps=STEPS, **extra))


def test_checker_reads_rendered_scenes_exactly():
    import torch

    from flux_api.meaning import adherence
    from flux_api.tiny_train.render import fill_unsaid, render, to_pil

    prompts = eval_prompts(40)
    g = torch.Generator().manual_seed(0)
    images = render(fill_unsaid(torch.tensor([s.as_tuple() for _, s in prompts]), g), 256, g)
    score = adherence([(s, to_pil(im)) for (_, s), im in zip(prompts, images)])
    assert score == {k: 100.0 for k in ("size", "colour", "shape", "position", "background")}


def test_the_one_attribute_prompts_are_the_grammars_partial_prompts_not_its_bare_words():
    # what `adherence --partial` draws (docs/QUALITY.md's weak-spot table)
    table = dict(partial_prompts())
    assert len(table) == 54 and "red" not in table and "circle" not in table
    assert table["a circle"].shape == 0 and table["something green"].colour == COLOURS.index("green")
    assert table["a shape on a red background"].background == COLOURS.index("red")


@pytest.mark.slow  # dozens of images, about 14 s each service
def test_a_prompt_draws_what_it_says(svc):
    prompts = eval_prompts(24)  # held out of training
    hits = {"colour": 0, "position": 0, "background": 0, "shape": 0}
    for i, (text, spec) in enumerate(prompts):
        got = draw(svc, text, seed=i).spec()
        for attribute in hits:
            hits[attribute] += getattr(got, attribute) == getattr(spec, attribute)
    assert hits["colour"] >= 23 and hits["position"] >= 23 and hits["background"] >= 23 and hits["shape"] >= 20, hits


@pytest.mark.slow  # about 10 s each service
def test_the_fast_preset_with_first_block_cache_still_draws_what_a_prompt_says(svc):
    # The preset's cache skips steps (its count is in the response) and the images still show what the
    # prompts say, with the thresholds of the full-step test above (docs/QUALITY.md: no adherence lost).
    hits = {"colour": 0, "position": 0, "background": 0, "shape": 0}
    skipped = 0
    for i, (text, spec) in enumerate(eval_prompts(24)):
        r = gen(svc, prompt=text, seed=i, preset="fast", num_inference_steps=None)
        skipped += r.json()["steps_skipped"]
        got = reading(r).spec()
        for attribute in hits:
            hits[attribute] += getattr(got, attribute) == getattr(spec, attribute)
    assert skipped >= 24, skipped  # the cache did skip: at least one step an image on average
    assert hits["colour"] >= 23 and hits["position"] >= 23 and hits["background"] >= 23 and hits["shape"] >= 20, hits


@pytest.mark.slow
def test_a_negative_prompt_steers_away(svc):
    # The check: "a circle" with the negative prompt "red" draws a red object at most half as
    # often as without it, at the service's default true-CFG scale, and not by erasing the object. Over
    # 40 seeds, not 20: the model leaves the colour open and picks red about a quarter of the time (10
    # of 40, 5 of the first 20), so 20 seeds would hang the verdict on one image (docs/QUALITY.md).
    seeds = range(40)
    plain = [draw(svc, "a circle", s).colour for s in seeds]
    steered = [draw(svc, "a circle", s, negative_prompt="red").colour for s in seeds]
    assert plain.count("red") >= 8 and steered.count("red") <= plain.count("red") / 2, (plain, steered)
    assert steered.count(None) <= 4, steered  # an object is still drawn


@pytest.mark.slow  # about 8 s each service
def test_the_green_lora_recolours_and_weight_0_and_removal_give_the_base(clean):
    svc = clean
    prompts = [(t, s) for t, s in eval_prompts(40) if s.colour != 3 and s.background != 3][:6]  # not green
    base = [gen(svc, prompt=t, seed=i, num_inference_steps=STEPS) for i, (t, _) in enumerate(prompts)]
    green = [draw(svc, t, i, lora_name="green").colour for i, (t, _) in enumerate(prompts)]
    assert green.count("green") >= 5, green
    assert sum(reading(b).colour == "green" for b in base) <= 1
    t, _ = prompts[0]
    zero = gen(svc, prompt=t, seed=0, num_inference_steps=STEPS, lora_name="green", lora_weight=0.0)
    assert image(zero).tobytes() == image(base[0]).tobytes()
    assert svc.client.post("/apply-lora", json={"lora_name": "green"}).status_code == 200
    assert draw(svc, t, 0).colour == "green"
    assert svc.client.post("/remove-lora", json={"lora_name": "green"}).status_code == 200
    assert image(gen(svc, prompt=t, seed=0, num_inference_steps=STEPS)).tobytes() == image(base[0]).tobytes()


@pytest.mark.slow
def test_the_quantized_backend_keeps_colour_within_5_points(bf16, fp4):
    prompts = eval_prompts(20)
    rates = {}
    for name, svc in (("bf16", bf16), ("fp4", fp4)):
        rates[name] = 100 * sum(draw(svc, t, i).colour == COLOURS[s.colour] for i, (t, s) in enumerate(prompts)) / len(prompts)
    assert fp4.client.get("/model-status").json()["backend"] == "torchao-int8"
    assert rates["fp4"] >= rates["bf16"] - 5, rates
