"""Issue 25, item 4: the `first_block_cache` request parameter (and the `fast` preset: 12 steps, threshold 0.2)
through the BF16 service's own generation path (Replica.run, as a request runs it), CPU, the tiny model: 100
held-out prompts at 256x256 (seed = the prompt's number), adherence by the meaning checker, seconds an image
(the whole call: text encoders and VAE included), and the transformer passes skipped. A RECORD, not maintained
code.

    PYTHONPATH=. python docs/quality/2026-12-06-first-block-cache-service.py 100
"""
import json
import sys
import time

from flux_api.engine.types import GenerationParams
from flux_api.meaning import adherence
from flux_api.tiny_train.adherence import load
from flux_api.tiny_train.grammar import eval_prompts

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
prompts = eval_prompts(n)
m = load("bf16")
replica = m.replicas[0]
for steps, threshold in ((12, None), (12, 0.2), (25, None), (25, 0.2), (25, 0.4)):
    pairs, skips = [], []
    t0 = time.perf_counter()
    for i, (text, spec) in enumerate(prompts):
        params = GenerationParams(prompt=text, seed=i, width=256, height=256, num_inference_steps=steps,
                                  guidance_scale=m.settings.default_guidance, first_block_cache=threshold)
        pairs.append((spec, replica.run(params, skips=skips)))
    seconds = (time.perf_counter() - t0) / len(prompts)
    skipped = sum(c.skipped for c in skips) / len(prompts) if threshold is not None else 0
    print(json.dumps(dict(steps=steps, threshold=threshold, **adherence(pairs), seconds_per_image=round(seconds, 3),
                          steps_skipped_per_image=round(skipped, 2))), flush=True)
m.unload()
