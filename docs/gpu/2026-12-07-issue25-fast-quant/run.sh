#!/usr/bin/env bash
# Issue 25, 2026-12-07: the fused fp8 quantization's kernel rewritten (two passes over the row, the second from
# L2; fast GELU and reciprocal). (1) kernels.py: it against inductor and variants, bytes against torchao's;
# (2) the FP4 service end to end, fused (that kernel: kernels.py's two_pass FAST, block and warps (1024, 4) for
# a single block's input and (2048, 8) for a feed-forward's; the service now runs one_pass) and not, against stock diffusers in the same run, with
# --first-block-cache 1.0 (the cached path must compile nothing after warm-up: the fix of 2026-12-06, not yet
# run on a GPU); (3) the PSNR of the fused service's image against the unfused one's (issue 25: >= 40 dB).
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r26 &&
#   (setsid nohup bash docs/gpu/2026-12-07-issue25-fast-quant/run.sh > /tmp/r26/run.log 2>&1 &)
#   and keep a call waiting on /tmp/r26/DONE at all times: a machine no call holds is given back after 30 s idle.
set -u
R=/tmp/r26
source "$(dirname "$0")/../prepare.sh"
KERNELS_OUT=$R/kernels.json python3 docs/gpu/2026-12-07-issue25-fast-quant/kernels.py 2>&1 | grep -v Warning
touch $R/KERNELS_DONE
date
python3 -m flux_api.bench --model full --targets stock,fp4,fp4+fused --sizes 1024 \
    --steps 28 --concurrency --repeats 2 --unseen 768 --first-block-cache 1.0 --out $R/bench.json
python3 - <<'PY'
import json
from flux_api.bench.images import psnr
R = json.load(open("/tmp/r26/bench.json"))
t = R["targets"]
img = lambda n: next(iter(t[n]["last_image_b64"].values()))
print("PSNR fp4+fused vs fp4:", psnr(img("fp4+fused"), img("fp4")))
PY
date
touch $R/DONE
