#!/usr/bin/env bash
# Issue 25 (2026-12-06, second machine of the night; the first was given back idle mid-run): what the first
# probe left open. The fused kernel was byte-exact but no faster than inductor's two kernels (H200, probe.json),
# so: (1) kernels.py, variants of the kernel (one pass / two passes, warps, block; exact and fast arithmetic);
# (2) the services end to end against stock diffusers in the same run: FP4 at its defaults (fuse_kernels off
# again), FP4 with compile_vae; --first-block-cache 1.0: the cached path must compile nothing after warm-up.
#   device: carry [".whl"]; rm -rf /tmp/src && cp -r "$PWD" /tmp/src && cd /tmp/src && mkdir -p /tmp/r25h &&
#   (setsid nohup bash docs/gpu/2026-12-06-issue25-fused-quant/run2.sh > /tmp/r25h/run.log 2>&1 &)
#   and keep a call waiting on /tmp/r25h/DONE at all times: a machine no call holds is given back after 30 s
#   idle, the background run with it (the first run's benchmark was lost that way).
set -u
R=/tmp/r25h
source "$(dirname "$0")/../prepare.sh"
KERNELS_OUT=$R/kernels.json python3 docs/gpu/2026-12-06-issue25-fused-quant/kernels.py 2>&1 | grep -v Warning
date
python3 -m flux_api.bench --model full --targets stock,fp4,fp4+vae --sizes 1024 \
    --steps 28 --concurrency --repeats 2 --unseen 768 --first-block-cache 1.0 --out $R/bench.json
date
touch $R/DONE
