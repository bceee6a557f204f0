#!/usr/bin/env bash
# Issue 25: the next run, written 2026-12-07 and NOT RUN yet (the session's device time was spent). In order of
# what it decides: (0) the fused kernel's CUDA test; (1) compile_persistent_rows and fuse_qkv together on both services
# against the defaults, stock in the same run, then each alone on FP4;
# (2) the peers (stock+compile, stock+fp8: about 6 minutes of warm-up together) for issue 25's table, last, so
# that what finishes first is what decides. The bench writes its JSON after each target: a run cut short
# keeps what it finished.
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r30 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-fast-quant/next.sh > /tmp/r30/run.log 2>&1 &)
#   and keep a call waiting on /tmp/r30/DONE at all times: a machine no call holds is given back after 30 s idle.
set -u
R=/tmp/r30
source "$(dirname "$0")/../prepare.sh"
# The fused kernel against torchao's arithmetic, as the CPU suite cannot check it (.whl carries pytest).
python3 -m pytest -q -p no:cacheprovider tests/test_fp8_fused.py -k cuda 2>&1 | tail -3
python3 -m flux_api.bench --model full --targets stock,fp4,fp4+rows+qkv,bf16,bf16+rows+qkv,fp4+rows,fp4+qkv,stock+compile,stock+fp8 \
    --sizes 1024 --steps 28 --concurrency --repeats 2 --unseen 768 --out $R/bench.json
python3 - <<'PY'
import json
from flux_api.bench.images import psnr
t = json.load(open("/tmp/r30/bench.json"))["targets"]
img = lambda n: next(iter(t[n]["last_image_b64"].values()))
for a, b in (("fp4+rows+qkv", "fp4"), ("bf16+rows+qkv", "bf16"), ("fp4+rows", "fp4"), ("fp4+qkv", "fp4")):
    if "last_image_b64" in t.get(a, {}) and "last_image_b64" in t.get(b, {}):
        print(f"PSNR {a} vs {b}:", psnr(img(a), img(b)))
PY
date
touch $R/DONE
