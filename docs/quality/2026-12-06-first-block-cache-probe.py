"""Issue 25, item 4 (its quality half): First Block Cache on the tiny model, BF16 service path, CPU.
Adherence of held-out prompts at 25 steps without the cache and with diffusers' FirstBlockCacheConfig at
three thresholds, and the time an image took. A RECORD, not maintained code.

    PYTHONPATH=. python docs/quality/2026-12-06-first-block-cache-probe.py 100
"""
import json
import sys
from flux_api.tiny_train.adherence import load, measure
from flux_api.tiny_train.grammar import eval_prompts
from diffusers import FirstBlockCacheConfig

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
prompts = eval_prompts(n)
m = load("bf16")
tr = m.replicas[0].pipe.transformer
rows = []
for threshold in (None, 0.05, 0.1, 0.2):
    if threshold is not None:
        tr.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    score, seconds = measure(m, prompts, 25)
    if threshold is not None:
        tr.disable_cache()
    rows.append(dict(threshold=threshold, **score, seconds_per_image=round(seconds, 3)))
    print(json.dumps(rows[-1]), flush=True)
m.unload()
