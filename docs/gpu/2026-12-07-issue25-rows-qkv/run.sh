#!/usr/bin/env bash
# Issue 25 (2026-12-07, second session), one run for everything new, as machines were scarce: the CUDA tests of
# both fused paths; then, stock in the same run, FP4 and BF16 defaults (BF16's now with the GELU epilogue:
# bf16_fused.py) against the previous BF16 default (+unfused) and against each service with every lever written
# and off (compile_persistent_rows, fuse_qkv, precompute_modulation, split_group_norm); then those one at a time on FP4, as far as
# the device time goes. No --concurrency (not what this run decides). The bench writes its JSON after each target.
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r31 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-rows-qkv/run.sh > /tmp/r31/run.log 2>&1 &)
set -u
R=/tmp/r31
source "$(dirname "$0")/../prepare.sh"
python3 -m pytest -q -p no:cacheprovider tests/test_fp8_fused.py tests/test_bf16_fused.py tests/test_group_norm.py -k cuda 2>&1 | tail -3
python3 -m flux_api.bench --model full \
    --targets stock,fp4,fp4+rows+qkv+mod+gn,bf16,bf16+unfused,bf16+rows+qkv+mod+gn,fp4+mod,fp4+qkv,fp4+rows,fp4+gn \
    --sizes 1024 --steps 28 --repeats 2 --unseen 768 --out $R/bench.json
python3 - <<'PY'
import json
from flux_api.bench.images import psnr
t = json.load(open("/tmp/r31/bench.json"))["targets"]
img = lambda n: next(iter(t[n]["last_image_b64"].values()))
for a, b in (("fp4+rows+qkv+mod+gn", "fp4"), ("bf16", "bf16+unfused"), ("bf16+rows+qkv+mod+gn", "bf16"),
             ("fp4+mod", "fp4"), ("fp4+qkv", "fp4"), ("fp4+rows", "fp4"), ("fp4+gn", "fp4")):
    if "last_image_b64" in t.get(a, {}) and "last_image_b64" in t.get(b, {}):
        print(f"PSNR {a} vs {b}:", psnr(img(a), img(b)))
PY
date
touch $R/DONE
